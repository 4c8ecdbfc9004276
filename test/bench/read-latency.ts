/**
 * `npm run bench`: latency of a small governed read, against the same read through the
 * reference MCP PostgreSQL server (@modelcontextprotocol/server-postgres) and a bare `pg`
 * client, all on one real PostgreSQL started for the run. Prints p50/p99 and the ratios.
 *
 * Everything runs on this machine over loopback; each side gets the same warm-up and count.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { spawn } from 'node:child_process';
import { appendFile } from 'node:fs/promises';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import pg from 'pg';
import { createMasker } from '../../policies/masking.js';
import { compilePattern } from '../../policies/pattern.js';
import { AuditLog } from '../../recordings/audit.js';
import { loadDevIssuer } from '../../server/identity/dev-issuer.js';
import { writeGatewayConfig } from '../helpers/gateway.js';
import { seedFixtures, startPostgres } from '../helpers/postgres.js';

const WARMUP = 50;
const COUNT = Number(process.env.BENCH_COUNT ?? 500);
const SQL = 'SELECT id, name, country FROM customers WHERE id = 3';

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

async function measure(name: string, once: () => Promise<void>) {
  for (let i = 0; i < WARMUP; i++) await once();
  const times: number[] = [];
  for (let i = 0; i < COUNT; i++) {
    const t = process.hrtime.bigint();
    await once();
    times.push(Number(process.hrtime.bigint() - t) / 1e6);
  }
  times.sort((a, b) => a - b);
  return { name, p50: percentile(times, 50), p99: percentile(times, 99) };
}

async function mcpClient(command: string, args: string[], env: Record<string, string>) {
  const client = new Client({ name: 'bench', version: '1.0.0' });
  await client.connect(
    new StdioClientTransport({
      command,
      args,
      env: { ...(process.env as Record<string, string>), ...env },
      stderr: 'ignore',
    }),
  );
  return client;
}

async function main() {
  const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
  const server = await startPostgres();
  const { info } = server;
  const dir = await mkdtemp(path.join(tmpdir(), 'gatehouse-bench-'));
  const clients: Client[] = [];
  let stopHttp = () => {};
  try {
    await seedFixtures(info);
    const policy = {
      rules: [
        {
          id: 'bench-read',
          match: {
            groups: ['bench'],
            tools: ['postgres_query'],
            targets: ['app-db'],
            operations: ['read'],
          },
          effect: 'allow',
          mask: ['pii'],
        },
        {
          // The same read with no masking, for the cost of masking on a governed call.
          id: 'bench-read-plain',
          match: {
            groups: ['bench-plain'],
            tools: ['postgres_query'],
            targets: ['app-db'],
            operations: ['read'],
          },
          effect: 'allow',
        },
      ],
      masking: { pii: { detectors: ['email', 'credit_card'], columns: ['*.password', '*.ssn'] } },
    };
    const configFile = await writeGatewayConfig(dir, { pg: info, policy });
    const issuer = await loadDevIssuer(path.join(dir, 'dev-issuer.json'), 'urn:gatehouse:dev', {
      create: true,
    });
    const token = await issuer.mint({
      sub: 'bench',
      groups: ['bench'],
      audience: 'gatehouse',
      ttlSec: 3600,
    });

    const governed = await mcpClient(
      process.execPath,
      [
        // BENCH_CPU_PROF=dir writes a V8 CPU profile of the gateway process there.
        ...(process.env.BENCH_CPU_PROF
          ? [`--cpu-prof`, `--cpu-prof-dir=${process.env.BENCH_CPU_PROF}`]
          : []),
        path.join(root, 'dist/server/cli.js'),
        'serve',
        '--config',
        configFile,
      ],
      {
        GATEHOUSE_TOKEN: token,
        GATEHOUSE_LOG_LEVEL: 'warn',
      },
    );
    clients.push(governed);
    const plainToken = await issuer.mint({
      sub: 'bench-plain',
      groups: ['bench-plain'],
      audience: 'gatehouse',
      ttlSec: 3600,
    });
    const unmasked = await mcpClient(
      process.execPath,
      [path.join(root, 'dist/server/cli.js'), 'serve', '--config', configFile],
      { GATEHOUSE_TOKEN: plainToken, GATEHOUSE_LOG_LEVEL: 'warn' },
    );
    clients.push(unmasked);
    const require = createRequire(import.meta.url);
    const referenceBin = require.resolve('@modelcontextprotocol/server-postgres/dist/index.js');
    const url = `postgresql://${encodeURIComponent(info.reader.user)}:${encodeURIComponent(info.reader.password)}@${info.host}:${info.port}/${info.database}`;
    const reference = await mcpClient(process.execPath, [referenceBin, url], {});
    clients.push(reference);
    const bare = new pg.Client({
      host: info.host,
      port: info.port,
      database: info.database,
      user: info.reader.user,
      password: info.reader.password,
    });
    await bare.connect();

    const check = (r: CallToolResult, who: string) => {
      if (r.isError) throw new Error(`${who} failed: ${JSON.stringify(r.content)}`);
    };
    const results = [];
    // Interleave nothing: each side runs alone so they do not compete for the 2 cores.
    results.push(await measure('bare pg', async () => void (await bare.query(SQL))));
    results.push(
      await measure('reference server-postgres', async () =>
        check(
          (await reference.callTool({ name: 'query', arguments: { sql: SQL } })) as CallToolResult,
          'reference',
        ),
      ),
    );
    results.push(
      await measure('gatehouse (governed)', async () =>
        check(
          (await governed.callTool({
            name: 'postgres_query',
            arguments: { target: 'app-db', sql: SQL },
          })) as CallToolResult,
          'gatehouse',
        ),
      ),
    );
    await bare.end();

    // Over HTTP: the same gateway config served with --transport http (limits raised so the
    // per-identity limiter measures nothing), one call at a time, then 32 clients at once.
    await appendFile(
      configFile,
      'http:\n  limits: { callsPerMinute: 100000000, concurrentCalls: 64, sessions: 64 }\n',
    );
    const httpGateway = spawn(
      process.execPath,
      [
        path.join(root, 'dist/server/cli.js'),
        'serve',
        '--config',
        configFile,
        '--transport',
        'http',
        '--listen',
        '127.0.0.1:0',
      ],
      { env: { ...process.env, GATEHOUSE_LOG_LEVEL: 'warn' }, stdio: ['ignore', 'ignore', 'pipe'] },
    );
    stopHttp = () => httpGateway.kill('SIGTERM');
    const httpUrl = await new Promise<URL>((resolve, reject) => {
      let err = '';
      httpGateway.stderr.on('data', (d: Buffer) => {
        err += d.toString();
        const m = /serving MCP over HTTP at (\S+)/.exec(err);
        if (m) resolve(new URL(m[1]!));
      });
      httpGateway.once('exit', () => reject(new Error(`http gateway exited: ${err}`)));
    });
    const httpClient = async () => {
      const c = new Client({ name: 'bench-http', version: '1.0.0' });
      await c.connect(
        new StreamableHTTPClientTransport(httpUrl, {
          requestInit: { headers: { Authorization: `Bearer ${token}` } },
        }),
      );
      clients.push(c);
      return c;
    };
    const query = (c: Client, who: string) => async () =>
      check(
        (await c.callTool({
          name: 'postgres_query',
          arguments: { target: 'app-db', sql: SQL },
        })) as CallToolResult,
        who,
      );
    const oneHttp = await httpClient();
    results.push(await measure('gatehouse over HTTP', query(oneHttp, 'gatehouse http')));
    const many = await Promise.all(Array.from({ length: 32 }, () => httpClient()));
    const perClient = Math.max(10, Math.floor(COUNT / 8));
    for (const c of many) await query(c, 'warm-up')();
    const started = process.hrtime.bigint();
    await Promise.all(
      many.map(async (c) => {
        for (let i = 0; i < perClient; i++) await query(c, 'gatehouse http x32')();
      }),
    );
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    const throughput = (32 * perClient) / seconds;

    // Where the governed time goes, measured in the same run: a call with no database work,
    // and one durable audit line (each governed call writes two: decision, then outcome).
    const context = [
      await measure('gatehouse list_targets (no db)', async () =>
        check(
          (await governed.callTool({ name: 'list_targets', arguments: {} })) as CallToolResult,
          'list_targets',
        ),
      ),
    ];
    const audit = await AuditLog.open(path.join(dir, 'bench-audit.jsonl'));
    context.push(
      await measure('one durable audit line', async () => {
        await audit.append({
          kind: 'decision',
          callId: 'bench',
          session: 'bench',
          sub: 'bench',
          groups: ['bench'],
          tool: 'postgres_query',
          target: 'app-db',
          operation: 'read',
          input: { sql: SQL },
          decision: {
            effect: 'allow',
            rule: 'bench-read',
            reason: 'statement is read (SelectStmt)',
          },
        });
      }),
    );
    await audit.close();

    // Masking: a governed read of 50 customers (emails, cards, SSNs) with and without the
    // rule's profile, then the masker alone over a 100k-row result against JSON.stringify of
    // the same rows (the work any result does anyway), all in this run.
    const WIDE = 'SELECT id, name, email, phone, card, ssn FROM customers ORDER BY id LIMIT 50';
    const masking = [
      await measure('governed 50 rows, masked', async () =>
        check(
          (await governed.callTool({
            name: 'postgres_query',
            arguments: { target: 'app-db', sql: WIDE },
          })) as CallToolResult,
          'masked',
        ),
      ),
      await measure('governed 50 rows, no mask', async () =>
        check(
          (await unmasked.callTool({
            name: 'postgres_query',
            arguments: { target: 'app-db', sql: WIDE },
          })) as CallToolResult,
          'unmasked',
        ),
      ),
    ];
    const masker = createMasker(
      [{ ...policy.masking.pii, detectors: ['email', 'credit_card', 'ssn'], style: 'redact' }],
      {
        pseudonymKey: new Uint8Array(32).fill(7),
      },
    );
    const columns = ['id', 'name', 'email', 'card', 'ssn', 'note'].map((name) => ({
      name,
      table: 'customers',
      column: name,
    }));
    const bigRows = Array.from({ length: 100_000 }, (_, i) => [
      i,
      `Customer ${i}`,
      `customer${i}@example.com`,
      '4111 1111 1111 1111',
      `${String(100 + (i % 800)).padStart(3, '0')}-45-${String(1000 + (i % 9000))}`,
      `order ${i} shipped to customer${i}@example.org, card 5500 0000 0000 0004 on file`,
    ]);
    const mb = Buffer.byteLength(JSON.stringify(bigRows)) / 1e6;
    const time = (f: () => void) => {
      const t = process.hrtime.bigint();
      f();
      return Number(process.hrtime.bigint() - t) / 1e9;
    };
    time(() => masker.maskRows(columns, bigRows.slice(0, 5_000))); // warm-up
    const maskS = Math.min(
      time(() => masker.maskRows(columns, bigRows)),
      time(() => masker.maskRows(columns, bigRows)),
    );
    const jsonS = Math.min(
      time(() => JSON.stringify(bigRows)),
      time(() => JSON.stringify(bigRows)),
    );

    // Custom patterns (policies/pattern.ts) over 1 MiB: a prefixed pattern on log-like text,
    // against V8's RegExp on the same text as the baseline; then the worst case the limits
    // allow, every state alive on every character.
    const logText = Array.from(
      { length: 1 << 14 },
      (_, i) => `2026-12-02 ${i} user EMP-${String(100000 + i)} opened ticket ${i}\n`,
    )
      .join('')
      .slice(0, 1 << 20);
    const prefixed = compilePattern('\\bEMP-\\d{6}\\b');
    const v8Prefixed = /\bEMP-\d{6}\b/g;
    const best = (f: () => void) => Math.min(...Array.from({ length: 5 }, () => time(f)));
    const nfaS = best(() => prefixed.spans(logText));
    const v8S = best(() => logText.match(v8Prefixed));
    const worst = compilePattern('a.{0,255}z');
    const worstS = time(() => worst.spans('a'.repeat(1 << 20)));

    const [bareR, refR, govR, httpR] = results as [
      (typeof results)[0],
      (typeof results)[0],
      (typeof results)[0],
      (typeof results)[0],
    ];
    const fmt = (n: number) => n.toFixed(3).padStart(8);
    process.stdout.write(`read latency, ${COUNT} calls each after ${WARMUP} warm-up (ms)\n`);
    process.stdout.write(`${'path'.padEnd(28)}${'p50'.padStart(8)}${'p99'.padStart(9)}\n`);
    for (const r of results)
      process.stdout.write(`${r.name.padEnd(28)}${fmt(r.p50)} ${fmt(r.p99)}\n`);
    process.stdout.write(
      `\ngoverned / reference: p50 ${(govR.p50 / refR.p50).toFixed(2)}x, p99 ${(govR.p99 / refR.p99).toFixed(2)}x\n` +
        `governed / bare pg:   p50 ${(govR.p50 / bareR.p50).toFixed(2)}x, p99 ${(govR.p99 / bareR.p99).toFixed(2)}x\n` +
        `reference / bare pg:  p50 ${(refR.p50 / bareR.p50).toFixed(2)}x, p99 ${(refR.p99 / bareR.p99).toFixed(2)}x\n` +
        `HTTP / stdio (governed): p50 ${(httpR.p50 / govR.p50).toFixed(2)}x, p99 ${(httpR.p99 / govR.p99).toFixed(2)}x\n`,
    );
    process.stdout.write(
      `\ngoverned reads over HTTP, 32 clients at once, audit on: ${throughput.toFixed(0)} calls/s ` +
        `(${32 * perClient} calls in ${seconds.toFixed(2)} s; one client one call at a time: ` +
        `${(1000 / httpR.p50).toFixed(0)} calls/s at its p50)\n`,
    );
    process.stdout.write(`\nwhere the governed time goes (same run)\n`);
    for (const r of context)
      process.stdout.write(`${r.name.padEnd(32)}${fmt(r.p50)} ${fmt(r.p99)}\n`);
    const [maskedR, plainR] = masking as [(typeof masking)[0], (typeof masking)[0]];
    process.stdout.write(`\nmasking (same run)\n`);
    for (const r of masking)
      process.stdout.write(`${r.name.padEnd(32)}${fmt(r.p50)} ${fmt(r.p99)}\n`);
    process.stdout.write(
      `masked / unmasked governed read: p50 ${(maskedR.p50 / plainR.p50).toFixed(2)}x, p99 ${(maskedR.p99 / plainR.p99).toFixed(2)}x\n` +
        `masker, 100k rows (${mb.toFixed(1)} MB as JSON): ${(mb / maskS).toFixed(1)} MB/s ` +
        `(${maskS.toFixed(2)} s); JSON.stringify of the same rows: ${(mb / jsonS).toFixed(1)} MB/s; ` +
        `masking / stringify ${(maskS / jsonS).toFixed(1)}x\n` +
        `custom pattern \\bEMP-\\d{6}\\b over 1 MiB of log lines: ${(1.048576 / nfaS).toFixed(1)} MB/s; ` +
        `V8 RegExp on the same text: ${(1.048576 / v8S).toFixed(1)} MB/s; NFA / V8 ${(nfaS / v8S).toFixed(1)}x\n` +
        `custom pattern a.{0,255}z over 1 MiB of 'a' (worst case the limits allow): ${worstS.toFixed(2)} s\n`,
    );
  } finally {
    await Promise.allSettled(clients.map((c) => c.close()));
    stopHttp();
    await server.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`bench failed: ${(err as Error).stack ?? String(err)}\n`);
  process.exitCode = 1;
});
