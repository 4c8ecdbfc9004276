#!/usr/bin/env node
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import {
  auditTail,
  auditVerify,
  recordingsList,
  recordingsReplay,
  recordingsShow,
} from '../recordings/commands.js';
import { AuditIntegrityError } from '../recordings/audit.js';
import { PostgresPools } from '../tools/postgres/pool.js';
import { createTools } from '../tools/registry.js';
import { loadConfig } from './config.js';
import { runDemo } from './demo/demo.js';
import { loadDevIssuer } from './identity/dev-issuer.js';
import { ConfigError, GovernanceError } from './kernel/errors.js';
import { explainCall } from './meta-tools.js';
import { loadGateway } from './runtime.js';
import { serveStdio } from './serve.js';
import { targetsCheck } from './targets-command.js';
import { parseDuration } from './kernel/units.js';

/**
 * The `gatehouse` command (CONTRACT section 1). Exit codes: 0 ok, 1 a check failed or the
 * operation was refused, 2 usage or config error. In `serve`/`demo` over stdio nothing but
 * MCP messages goes to stdout; everything human goes to stderr.
 */

const USAGE = `usage: gatehouse <command> [options]

  serve [--config F] [--token-file F]          the server over stdio (token: GATEHOUSE_TOKEN)
  demo                                         zero-setup demo over stdio
  token --sub S [--group G]... [--ttl 15m] [--config F]
  policy check [--config F]
  policy test [--config F] [FILE...]
  policy explain [--config F] --sub S [--group G]... --tool T --input JSON
  targets check [--config F] [--strict] [NAME...]   connect to targets, warn about powerful roles
  audit verify [--config F] [--file F]
  audit tail [--config F] [--file F] [-f] [--sub S] [--tool T] [--decision D] [--json]
  recordings list|show ID|replay ID [--config F] [--dir D] [--speed N]

  Not in this release: --transport http (Streamable HTTP, SSE) and \`gatehouse approvals\`.
  Exit codes: 0 ok, 1 a check failed or the operation was refused, 2 usage or config error.
`;

class UsageError extends Error {}

const io = { out: process.stdout, err: process.stderr };

// `gatehouse audit tail | head`: the reader went away, which is a normal end for a reader
// command. (serve never gets here: its stdout is the MCP channel, handled by the transport.)
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
  throw err;
});

function parse<T extends NonNullable<ParseArgsConfig['options']>>(
  args: string[],
  options: T,
  positionals = false,
) {
  try {
    return parseArgs({ args, options, strict: true, allowPositionals: positionals });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

const configOpt = { config: { type: 'string', default: './gatehouse.yaml' } } as const;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  // `gatehouse audit tail --help`: usage on stdout, exit 0, whatever the command.
  if (command !== undefined && (rest.includes('--help') || rest.includes('-h'))) {
    io.out.write(USAGE);
    return 0;
  }
  switch (command) {
    case 'serve': {
      const { values } = parse(rest, {
        ...configOpt,
        transport: { type: 'string', default: 'stdio' },
        listen: { type: 'string' },
        'token-file': { type: 'string' },
      });
      checkTransport(values.transport);
      const tokenFile = values['token-file'];
      if (tokenFile) {
        try {
          readFileSync(tokenFile, 'utf8');
        } catch (err) {
          throw new UsageError(
            `cannot read --token-file ${tokenFile}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`,
          );
        }
      }
      // The token is read again on every call, so a rotated token file takes effect at once.
      const token = tokenFile
        ? () => readToken(tokenFile)
        : () => process.env.GATEHOUSE_TOKEN?.trim() || undefined;
      return serveStdio(values.config, token);
    }
    case 'demo': {
      const { values } = parse(rest, {
        transport: { type: 'string', default: 'stdio' },
        listen: { type: 'string' },
      });
      checkTransport(values.transport);
      return runDemo();
    }
    case 'token': {
      const { values } = parse(rest, {
        ...configOpt,
        sub: { type: 'string' },
        group: { type: 'string', multiple: true, default: [] },
        ttl: { type: 'string', default: '15m' },
      });
      if (!values.sub) throw new UsageError('token needs --sub');
      const ttlMs = parseDuration(values.ttl);
      if (ttlMs === undefined)
        throw new UsageError(`--ttl ${values.ttl} is not a duration (e.g. 15m, 1h)`);
      const config = await loadConfig(values.config);
      const dev = config.identity.devIssuer;
      if (!dev) throw new ConfigError(`${config.file}: identity.devIssuer is not configured`);
      const issuer = await loadDevIssuer(dev.keyFile, dev.issuer, { create: true });
      const token = await issuer.mint({
        sub: values.sub,
        groups: values.group,
        ttlSec: Math.ceil(ttlMs / 1000),
        audience: config.identity.audience,
      });
      io.out.write(token + '\n');
      return 0;
    }
    case 'policy':
      return policyCommand(rest);
    case 'audit':
      return auditCommand(rest);
    case 'targets': {
      const [sub, ...args] = rest;
      if (sub !== 'check') throw new UsageError('targets check [--config F] [--strict] [NAME...]');
      const { values, positionals } = parse(
        args,
        { ...configOpt, strict: { type: 'boolean', default: false } },
        true,
      );
      return targetsCheck(values.config, positionals, { strict: values.strict, out: io.out });
    }
    case 'recordings':
      return recordingsCommand(rest);
    case 'approvals':
      io.err.write(
        'gatehouse approvals: out-of-band approvals are not implemented in this version; calls whose rule says "approve" are refused with APPROVAL_UNAVAILABLE\n',
      );
      return 2;
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      (command === undefined ? io.err : io.out).write(USAGE);
      return command === undefined ? 2 : 0;
    default:
      throw new UsageError(`unknown command ${JSON.stringify(command)}`);
  }
}

function checkTransport(transport: string | undefined): void {
  if (transport === 'stdio') return;
  if (transport === 'http') {
    throw new UsageError(
      'transport http (Streamable HTTP and SSE) is not available in this release; use --transport stdio',
    );
  }
  throw new UsageError(`unknown transport ${JSON.stringify(transport)}: use stdio`);
}

function readToken(file: string): string | undefined {
  try {
    return readFileSync(file, 'utf8').trim() || undefined;
  } catch {
    return undefined;
  }
}

async function policyCommand(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  switch (sub) {
    case 'check': {
      const { values } = parse(rest, configOpt);
      try {
        const { config, policies } = await loadGateway(values.config);
        io.out.write(
          `ok: ${policies.engine.rules.length} rules in ${policies.files.length} files, ` +
            `${Object.keys(config.targets).length} targets, ${policies.tests.length} tests\n`,
        );
        return 0;
      } catch (err) {
        if (!(err instanceof ConfigError)) throw err;
        io.out.write(err.issues.join('\n') + '\n');
        return 1;
      }
    }
    case 'test': {
      const { values, positionals } = parse(rest, configOpt, true);
      const { policies } = await loadGateway(values.config);
      const tools = createTools(new PostgresPools());
      let cases = policies.tests;
      if (positionals.length > 0) {
        const wanted = positionals.map((p) => path.resolve(p));
        const extra = await loadTestsFrom(wanted, policies.files);
        cases = extra;
      }
      let passed = 0;
      let failed = 0;
      for (const { test, where } of cases) {
        const principal = {
          sub: test.identity.sub,
          groups: test.identity.groups,
          claims: test.identity.claims ?? {},
        };
        let got: { effect: string; rule: string; reason: string };
        try {
          got = await explainCall(tools, policies.engine, principal, {
            tool: test.call.tool,
            input: test.call.input,
          });
        } catch (err) {
          if (!(err instanceof GovernanceError)) throw err;
          got = { effect: 'error', rule: '-', reason: `${err.code}: ${err.message}` };
        }
        const ok =
          got.effect === test.expect.effect &&
          (test.expect.rule === undefined || test.expect.rule === got.rule);
        if (ok) {
          passed++;
          io.out.write(`ok - ${test.name}\n`);
        } else {
          failed++;
          io.out.write(
            `not ok - ${test.name} (${where}): expected ${test.expect.effect}${test.expect.rule ? ` by ${test.expect.rule}` : ''}, ` +
              `got ${got.effect} by ${got.rule}: ${got.reason}\n`,
          );
        }
      }
      io.out.write(`${passed} passed, ${failed} failed\n`);
      return failed > 0 ? 1 : 0;
    }
    case 'explain': {
      const { values } = parse(rest, {
        ...configOpt,
        sub: { type: 'string' },
        group: { type: 'string', multiple: true, default: [] },
        tool: { type: 'string' },
        input: { type: 'string' },
      });
      if (!values.sub || !values.tool || values.input === undefined) {
        throw new UsageError('policy explain needs --sub, --tool and --input');
      }
      let input: unknown;
      try {
        input = JSON.parse(values.input);
      } catch {
        throw new UsageError('--input is not valid JSON');
      }
      if (!input || typeof input !== 'object' || Array.isArray(input))
        throw new UsageError('--input must be a JSON object');
      const { policies } = await loadGateway(values.config);
      const tools = createTools(new PostgresPools());
      try {
        const decision = await explainCall(
          tools,
          policies.engine,
          { sub: values.sub, groups: values.group, claims: {} },
          { tool: values.tool, input: input as Record<string, unknown> },
        );
        io.out.write(JSON.stringify(decision, null, 2) + '\n');
        return 0;
      } catch (err) {
        if (!(err instanceof GovernanceError)) throw err;
        io.out.write(JSON.stringify({ error: err.code, reason: err.message }, null, 2) + '\n');
        return 1;
      }
    }
    default:
      throw new UsageError('policy check | policy test | policy explain');
  }
}

async function loadTestsFrom(files: string[], configured: readonly string[]) {
  const { loadYamlFile } = await import('./kernel/yaml.js');
  const { PolicyFile } = await import('../policies/schema.js');
  const out: Array<{
    file: string;
    test: import('../policies/schema.js').PolicyTest;
    where: string;
  }> = [];
  for (const file of files) {
    const { value, locate } = await loadYamlFile(file, PolicyFile);
    const loaded = configured.map((f) => path.resolve(f)).includes(path.resolve(file));
    if (!loaded && (value.rules.length > 0 || Object.keys(value.masking).length > 0)) {
      io.err.write(
        `gatehouse: note: ${file} is not among the config's policies: its rules and masking are ` +
          'not loaded, and its tests run against the configured policies\n',
      );
    }
    value.tests.forEach((test, i) => out.push({ file, test, where: locate(['tests', i]) }));
  }
  return out;
}

/** Audit and recordings commands read files only; a config is needed only to find them. */
async function configuredPath(
  configFile: string,
  pick: (c: Awaited<ReturnType<typeof loadConfig>>) => string,
) {
  if (!existsSync(configFile))
    throw new UsageError(`no config at ${configFile}; pass --config or --file`);
  return pick(await loadConfig(configFile));
}

async function auditCommand(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  switch (sub) {
    case 'verify': {
      const { values } = parse(rest, { ...configOpt, file: { type: 'string' } });
      const file = values.file ?? (await configuredPath(values.config, (c) => c.audit.file));
      return auditVerify(file, io);
    }
    case 'tail': {
      const { values } = parse(rest, {
        ...configOpt,
        file: { type: 'string' },
        follow: { type: 'boolean', short: 'f', default: false },
        sub: { type: 'string' },
        tool: { type: 'string' },
        decision: { type: 'string' },
        json: { type: 'boolean', default: false },
      });
      const file = values.file ?? (await configuredPath(values.config, (c) => c.audit.file));
      const controller = new AbortController();
      process.once('SIGINT', () => controller.abort());
      return auditTail(
        file,
        {
          follow: values.follow,
          json: values.json,
          signal: controller.signal,
          ...(values.sub ? { sub: values.sub } : {}),
          ...(values.tool ? { tool: values.tool } : {}),
          ...(values.decision ? { decision: values.decision } : {}),
        },
        io,
      );
    }
    default:
      throw new UsageError('audit verify | audit tail');
  }
}

async function recordingsCommand(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  if (sub !== 'list' && sub !== 'show' && sub !== 'replay') {
    throw new UsageError('recordings list | recordings show ID | recordings replay ID');
  }
  // `--speed -1` would read as an option named 1: keep a dash-led value with its flag, so
  // the check below can say what is wrong with it.
  const argv: string[] = [];
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i]!;
    if (a === '--speed' && rest[i + 1]?.startsWith('-')) argv.push(`--speed=${rest[++i]}`);
    else argv.push(a);
  }
  const { values, positionals } = parse(
    argv,
    { ...configOpt, dir: { type: 'string' }, speed: { type: 'string', default: '1' } },
    true,
  );
  const dir = values.dir ?? (await configuredPath(values.config, (c) => c.recordings.dir));
  const id = positionals[0];
  switch (sub) {
    case 'list':
      return recordingsList(dir, io);
    case 'show':
      if (!id) throw new UsageError('recordings show ID');
      return recordingsShow(dir, id, io);
    case 'replay': {
      if (!id) throw new UsageError('recordings replay ID [--speed N]');
      const speed = Number(values.speed);
      if (!Number.isFinite(speed) || speed < 0)
        throw new UsageError('--speed takes a number >= 0 (0: no pauses)');
      const controller = new AbortController();
      process.once('SIGINT', () => controller.abort());
      return recordingsReplay(dir, id, { speed, signal: controller.signal }, io);
    }
    default:
      throw new UsageError('recordings list | recordings show ID | recordings replay ID');
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    // serve/demo resolve only when the session ends; everything else exits now.
    process.exitCode = code;
  },
  (err: unknown) => {
    if (err instanceof UsageError) {
      io.err.write(`gatehouse: ${err.message}\n\n${USAGE}`);
      process.exitCode = 2;
    } else if (err instanceof ConfigError) {
      io.err.write(err.issues.map((i) => `gatehouse: ${i}`).join('\n') + '\n');
      process.exitCode = 2;
    } else if (err instanceof AuditIntegrityError) {
      // The log cannot be continued (torn, edited, held by another process): refused.
      io.err.write(`gatehouse: ${err.message}\n`);
      process.exitCode = 1;
    } else if (err instanceof GovernanceError) {
      io.err.write(`gatehouse: ${err.publicText}\n`);
      process.exitCode = 1;
    } else {
      io.err.write(`gatehouse: ${(err as Error)?.message ?? String(err)}\n`);
      process.exitCode = 2;
    }
  },
);
