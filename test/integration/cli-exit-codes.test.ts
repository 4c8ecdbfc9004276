import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { AuditLog } from '../../recordings/audit.js';
import { runCli, type CliRun } from '../helpers/cli.js';

/**
 * CONTRACT section 1, exit codes: 0 ok, 1 a check failed or the operation was refused, 2 usage
 * or config error. Each command is run as a user runs it (the real CLI in a child process),
 * against a config, dev issuer, policies and audit log made in a temp dir; no database.
 */

const root = fileURLToPath(new URL('../..', import.meta.url));

type Run = CliRun;

/** The CLI with no token in its environment. */
const gatehouse = (args: string[], env: Record<string, string> = {}) =>
  runCli(args, { GATEHOUSE_TOKEN: '', ...env });

/** A loopback port nothing listens on: taken from the OS, then given back. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

const policy = {
  rules: [
    {
      id: 'analysts-read',
      match: { groups: ['analysts'], tools: ['postgres_query'], operations: ['read'] },
      effect: 'allow',
    },
    {
      id: 'analysts-write',
      match: { groups: ['analysts'], tools: ['postgres_query'], operations: ['write'] },
      effect: 'approve',
      approval: { approvers: { groups: ['dba'] } },
    },
  ],
  tests: [
    {
      name: 'analysts read',
      identity: { sub: 'alice', groups: ['analysts'] },
      call: { tool: 'postgres_query', input: { target: 'app-db', sql: 'SELECT 1' } },
      expect: { effect: 'allow', rule: 'analysts-read' },
    },
  ],
};

const call = (sql: string) => JSON.stringify({ target: 'app-db', sql });

// Each test spawns the CLI (through tsx) a few times at once: generous on a busy machine.
describe('CONTRACT 1: gatehouse exit codes, command by command', { timeout: 90_000 }, () => {
  let dir: string;
  let config: string;
  let missing: string;
  let auditFile: string;
  let tamperedFile: string;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'gatehouse-cli-'));
    config = path.join(dir, 'gatehouse.yaml');
    missing = path.join(dir, 'no-such.yaml');
    await writeFile(path.join(dir, 'policy.yaml'), stringify(policy));
    await writeFile(
      path.join(dir, 'failing-tests.yaml'),
      stringify({
        tests: [
          {
            name: 'analysts may drop tables (they may not)',
            identity: { sub: 'alice', groups: ['analysts'] },
            call: { tool: 'postgres_query', input: { target: 'app-db', sql: 'DROP TABLE t' } },
            expect: { effect: 'allow' },
          },
        ],
      }),
    );
    await writeFile(
      config,
      stringify({
        identity: { audience: 'gatehouse', devIssuer: { keyFile: 'dev-issuer.json' } },
        targets: {
          'app-db': {
            kind: 'postgres',
            host: '127.0.0.1',
            port: await closedPort(),
            database: 'app',
            user: 'reader',
            password: { env: 'GH_CLI_TEST_PASSWORD' },
            connectTimeout: '5s',
          },
        },
        policies: ['./policy.yaml'],
        audit: { file: 'audit.jsonl' },
        recordings: { dir: 'recordings' },
        state: { file: 'state.json' },
      }),
    );
    await writeFile(path.join(dir, 'bad.yaml'), 'identity: { audience: 42 }\nnot-a-key: 1\n');

    auditFile = path.join(dir, 'audit.jsonl');
    const log = await AuditLog.open(auditFile);
    for (const sql of ['SELECT 1', 'SELECT 2', 'SELECT 3']) {
      await log.append({
        kind: 'decision',
        callId: `call-${sql}`,
        session: 'sess-1',
        sub: 'alice',
        groups: ['analysts'],
        tool: 'postgres_query',
        target: 'app-db',
        operation: 'read',
        input: { sql, params: [] },
        decision: { effect: 'allow', rule: 'analysts-read', reason: 'statement is read' },
      });
    }
    await log.close();
    tamperedFile = path.join(dir, 'tampered.jsonl');
    const text = await readFile(auditFile, 'utf8');
    await writeFile(tamperedFile, text.replace('"sub":"alice"', '"sub":"mallory"'));
    await mkdir(path.join(dir, 'recordings'));
  });

  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  /** A usage error is one line naming the problem, then one saying where to read more. */
  const expectUsage = (r: Run, problem: RegExp, help: string) => {
    expect(r.status).toBe(2);
    const lines = r.stderr.trimEnd().split('\n');
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatch(problem);
    expect(lines[0]).toMatch(/^gatehouse: /);
    expect(lines[1]).toBe(`see '${help}'`);
  };

  it('serve without a token: 1 (refused at start, nothing served)', async () => {
    const r = await gatehouse(['serve', '--config', config]);
    expect(r.stderr).toMatch(/UNAUTHENTICATED: no token/);
    expect(r.stdout).toBe('');
    expect(r.status).toBe(1);
  });

  it('serve and demo: --listen (CONTRACT 1) is checked, never ignored (2); an unknown transport is refused (2)', async () => {
    const [listen, bad, unknown, tokenFile] = await Promise.all([
      gatehouse(['serve', '--config', config, '--listen', '127.0.0.1:8080']),
      gatehouse(['demo', '--transport', 'http', '--listen', 'localhost']),
      gatehouse(['serve', '--config', config, '--transport', 'websocket']),
      gatehouse(['serve', '--config', config, '--transport', 'http', '--token-file', config]),
    ]);
    expectUsage(
      listen,
      /--listen applies to --transport http; stdio has nothing to listen on/,
      'gatehouse serve --help',
    );
    expectUsage(bad, /--listen "localhost" is not HOST:PORT/, 'gatehouse demo --help');
    expectUsage(
      unknown,
      /unknown transport "websocket": use stdio or http/,
      'gatehouse serve --help',
    );
    expectUsage(tokenFile, /--token-file applies to stdio/, 'gatehouse serve --help');
  });

  it('serve --transport http on an address in use: 2, naming it', async () => {
    const blocker = createServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    const { port } = blocker.address() as AddressInfo;
    try {
      const r = await gatehouse([
        'serve',
        '--config',
        config,
        '--transport',
        'http',
        '--listen',
        `127.0.0.1:${port}`,
      ]);
      expect(r.stderr).toMatch(
        new RegExp(`cannot listen on 127.0.0.1:${port}: the address is in use`),
      );
      expect(r.status).toBe(2);
    } finally {
      blocker.close();
    }
  });

  it('token: 0 with a JWT on stdout; 2 without --sub', async () => {
    const [ok, nosub] = await Promise.all([
      gatehouse(['token', '--config', config, '--sub', 'alice', '--group', 'a']),
      gatehouse(['token', '--config', config]),
    ]);
    expect(ok.stdout).toMatch(/^[\w-]+\.[\w-]+\.[\w-]+\n$/);
    expect(ok.status).toBe(0);
    expectUsage(nosub, /^gatehouse: token needs --sub$/, 'gatehouse token --help');
  });

  it('policy check: 0 valid (counted, singular where one); 1 invalid; 2 no config', async () => {
    const [ok, bad, none] = await Promise.all([
      gatehouse(['policy', 'check', '--config', config]),
      gatehouse(['policy', 'check', '--config', path.join(dir, 'bad.yaml')]),
      gatehouse(['policy', 'check', '--config', missing]),
    ]);
    expect(ok.stdout).toBe('ok: 2 rules in 1 file, 1 target, 1 test\n');
    expect(ok.status).toBe(0);
    expect(bad.stdout).toMatch(/bad\.yaml:\d+:\d+: /);
    expect(bad.status).toBe(1);
    expectUsage(none, /no config at /, 'gatehouse policy check --help');
  });

  it('policy test: 0 all pass; 1 a test fails', async () => {
    const [ok, failing] = await Promise.all([
      gatehouse(['policy', 'test', '--config', config]),
      gatehouse(['policy', 'test', '--config', config, path.join(dir, 'failing-tests.yaml')]),
    ]);
    expect(ok.stdout).toMatch(/^ok - analysts read\n1 passed, 0 failed\n$/);
    expect(ok.status).toBe(0);
    expect(failing.stdout).toMatch(/not ok - analysts may drop tables .*expected allow, got deny/);
    expect(failing.stdout).toMatch(/0 passed, 1 failed/);
    expect(failing.status).toBe(1);
  });

  it('policy explain: 0 allow, 0 approve, 1 deny, 2 --input not JSON', async () => {
    const explain = (input: string, ...extra: string[]) =>
      gatehouse([
        ...['policy', 'explain', '--config', config, '--sub', 'alice'],
        ...['--tool', 'postgres_query', '--input', input, ...extra],
      ]);
    const [allow, approve, deny, notJson] = await Promise.all([
      explain(call('SELECT 1'), '--group', 'analysts'),
      explain(call('UPDATE t SET a = 1 WHERE id = 2'), '--group', 'analysts'),
      explain(call('SELECT 1')),
      explain('{not json'),
    ]);
    expect(JSON.parse(allow.stdout)).toMatchObject({ effect: 'allow', rule: 'analysts-read' });
    expect(allow.status).toBe(0);
    expect(JSON.parse(approve.stdout)).toMatchObject({ effect: 'approve', rule: 'analysts-write' });
    expect(approve.status).toBe(0);
    expect(JSON.parse(deny.stdout)).toMatchObject({ effect: 'deny', rule: 'default-deny' });
    expect(deny.status).toBe(1);
    expectUsage(notJson, /--input is not valid JSON/, 'gatehouse policy explain --help');
  });

  it('targets check: 1 when a target cannot be reached; 2 without a config', async () => {
    const [r, none] = await Promise.all([
      gatehouse(['targets', 'check', '--config', config], {
        GH_CLI_TEST_PASSWORD: 'unused-password',
      }),
      gatehouse(['targets', 'check', '--config', missing]),
    ]);
    expect(r.stdout).toMatch(/error +cannot connect: connection refused by 127\.0\.0\.1:\d+/);
    expect(r.stdout).toMatch(/1 target checked: 1 error, 0 warnings/);
    expect(r.status).toBe(1);
    expectUsage(none, /no config at /, 'gatehouse targets check --help');
  });

  it('audit verify: 0 intact, 1 tampered, 2 with neither --file nor a config', async () => {
    const [ok, tampered, none] = await Promise.all([
      gatehouse(['audit', 'verify', '--config', config]),
      gatehouse(['audit', 'verify', '--file', tamperedFile]),
      gatehouse(['audit', 'verify', '--config', missing]),
    ]);
    expect(ok.stdout).toMatch(/^ok: 3 lines, chain intact/);
    expect(ok.status).toBe(0);
    expect(tampered.stdout).toMatch(/audit chain broken at line 1/);
    expect(tampered.status).toBe(1);
    expectUsage(none, /no config at .* \(or pass --file F\)/, 'gatehouse audit verify --help');
  });

  it('audit tail: 0', async () => {
    const r = await gatehouse(['audit', 'tail', '--file', auditFile, '--sub', 'alice']);
    expect(r.stdout.trimEnd().split('\n')).toHaveLength(3);
    expect(r.status).toBe(0);
  });

  it('recordings list: 0', async () => {
    const r = await gatehouse(['recordings', 'list', '--config', config]);
    expect(r.stdout).toMatch(/^no recordings in /);
    expect(r.status).toBe(0);
  });

  it('approvals without a token, or with no server to talk to: 2', async () => {
    const url = `http://127.0.0.1:${await closedPort()}`;
    const noToken = await gatehouse(['approvals', 'list', '--server', url]);
    expect(noToken.stderr).toMatch(/no token: pass --token T or set GATEHOUSE_TOKEN/);
    expect(noToken.status).toBe(2);
    const down = await gatehouse(['approvals', 'list', '--server', url, '--token', 'x']);
    expect(down.stderr).toBe(`gatehouse approvals: cannot reach ${url} (ECONNREFUSED)\n`);
    expect(down.status).toBe(2);
  });

  it('usage errors are one line and exit 2: unknown command, unknown option, missing option', async () => {
    const [command, sub, option, required] = await Promise.all([
      gatehouse(['frobnicate']),
      gatehouse(['policy', 'frobnicate']),
      gatehouse(['audit', 'tail', '--nope']),
      gatehouse(['policy', 'explain', '--sub', 'alice']),
    ]);
    expectUsage(command, /^gatehouse: unknown command 'frobnicate'$/, 'gatehouse --help');
    expectUsage(sub, /^gatehouse: unknown command 'policy frobnicate'$/, 'gatehouse policy --help');
    expectUsage(option, /^gatehouse: unknown option '--nope'$/, 'gatehouse audit tail --help');
    expectUsage(
      required,
      /^gatehouse: policy explain needs --tool and --input$/,
      'gatehouse policy explain --help',
    );
  });

  it.each([
    ['serve', ''],
    ['token --sub alice', ''],
    ['policy test', ''],
    ['policy explain --sub a --tool postgres_query --input {}', ''],
    ['audit tail', ' (or pass --file F)'],
    ['recordings list', ' (or pass --dir D)'],
  ])('a missing config reads the same for every command: %s (2)', async (args, orElse) => {
    const r = await gatehouse([...args.split(' '), '--config', missing]);
    expect(r.status).toBe(2);
    expect(r.stderr.split('\n')[0]).toBe(`gatehouse: no config at ${missing}${orElse}`);
  });

  it('--version and -V: the package version, 0', async () => {
    const { version } = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8')) as {
      version: string;
    };
    for (const r of await Promise.all([gatehouse(['--version']), gatehouse(['-V'])])) {
      expect(r.stdout).toBe(`gatehouse ${version}\n`);
      expect(r.status).toBe(0);
    }
  });

  it('--help: 0 on stdout, at every level; the README command reference matches it', async () => {
    const [top, group, one] = await Promise.all([
      gatehouse(['--help']),
      gatehouse(['policy', '--help']),
      gatehouse(['audit', 'tail', '--nope', '--help']),
    ]);
    expect(top.status).toBe(0);
    expect(top.stdout).toMatch(/^usage: gatehouse <command>/);
    const synopses = top.stdout
      .split('\n')
      .filter((l) => l.startsWith('  gatehouse '))
      .map((l) => l.trim());
    expect(synopses.length).toBeGreaterThanOrEqual(13);
    const readme = readFileSync(path.join(root, 'README.md'), 'utf8').replaceAll('\\|', '|');
    expect(synopses.filter((s) => !readme.includes(`\`${s}\``))).toEqual([]);

    expect(group.stdout).toContain('gatehouse policy explain --sub S');
    expect(group.status).toBe(0);
    expect(one.stdout).toMatch(/^usage: gatehouse audit tail /);
    expect(one.stdout).toMatch(/-f, --follow/);
    expect(one.status).toBe(0);
  });
});
