import { createHmac } from 'node:crypto';
import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import {
  CLOSE_WAIT_MS,
  createNotifier,
  type NotifierOptions,
} from '../../server/approvals/notify.js';
import type { ApprovalRecord } from '../../server/approvals/types.js';
import type { NotificationsConfig } from '../../server/config.js';
import { log } from '../../server/kernel/log.js';

/**
 * The approver webhook (server/approvals/notify.ts) against a real HTTP receiver: what arrives,
 * how it is signed, what never leaves (the record's `args` and `result`), and that a slow,
 * failing or missing receiver never holds the caller and is given up on in bounded time.
 */

const SECRET_ENV = 'GH_TEST_WEBHOOK_SECRET';
const SECRET = 'whsec-test-3f9a0c1e7b5d';
/** In the record's `args` and `result` only: must not appear in anything sent. */
const ARGS_CANARY = 'canary-in-args-5e1d';
const RESULT_CANARY = 'canary-in-result-8c2f';
const CREATED = Date.parse('2026-12-02T15:55:00Z');
const EXPIRES = Date.parse('2026-12-02T16:00:00Z');

function approval(over: Partial<ApprovalRecord> = {}): ApprovalRecord {
  return {
    id: 'apr_0123456789abcdefABCDEF',
    status: 'pending',
    createdAt: CREATED,
    expiresAt: EXPIRES,
    requester: { sub: 'alice', groups: ['dev'] },
    session: 'ses_1',
    callId: 'call_1',
    tool: 'postgres_query',
    target: 'app-db',
    operation: 'write',
    input: { sql: "UPDATE accounts SET plan = 'pro' WHERE id = 7" },
    args: { target: 'app-db', sql: 'UPDATE ...', note: ARGS_CANARY },
    digest: 'a'.repeat(64),
    policyVersion: 'b'.repeat(64),
    rule: 'sre-writes',
    ruleReason: 'writes on production need an SRE',
    purpose: 'upgrade a customer who paid',
    trace: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
    approvers: { groups: ['sre'] },
    quorum: 1,
    answers: [],
    result: { content: [{ type: 'text', text: RESULT_CANARY }] },
    ...over,
  };
}

interface Hit {
  path: string;
  headers: IncomingHttpHeaders;
  body: string;
  at: number;
}

/**
 * A real HTTP receiver on a loopback port. `respond` gives each request's status (by its
 * 1-based number), or `undefined` to never answer it.
 */
async function startReceiver(respond: (n: number, hit: Hit) => number | undefined = () => 200) {
  const hits: Hit[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const hit = {
        path: req.url ?? '',
        headers: req.headers,
        body: Buffer.concat(chunks).toString('utf8'),
        at: Date.now(),
      };
      hits.push(hit);
      const status = respond(hits.length, hit);
      if (status === undefined) return;
      res.writeHead(status, status >= 300 && status < 400 ? { Location: '/elsewhere' } : {});
      res.end('ok');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    hits,
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

const receivers: Array<{ close(): Promise<void> }> = [];
async function receiver(respond?: (n: number, hit: Hit) => number | undefined) {
  const r = await startReceiver(respond);
  receivers.push(r);
  return r;
}

function webhook(url: string, over: Partial<NonNullable<NotificationsConfig['webhook']>> = {}) {
  return {
    webhook: { url, secret: { env: SECRET_ENV }, timeout: 5_000, retries: 0, ...over },
  };
}

const OPTS: NotifierOptions = {
  configDir: '/nonexistent',
  serverUrl: 'http://127.0.0.1:8080',
  configFile: '/etc/gatehouse/gatehouse.yaml',
  retryBaseMs: 20,
};

function sign(secret: string, hit: Hit): string {
  const signed = `${String(hit.headers['x-gatehouse-timestamp'])}.${hit.body}`;
  return `sha256=${createHmac('sha256', secret).update(signed).digest('hex')}`;
}

/** The first argument (the fields) of each call of a spied log method. */
function logged(spy: { mock: { calls: unknown[][] } }): Array<Record<string, unknown>> {
  return spy.mock.calls.map((c) => c[0] as Record<string, unknown>);
}

describe('approval webhook', () => {
  beforeEach(() => {
    process.env[SECRET_ENV] = SECRET;
  });
  afterEach(async () => {
    delete process.env[SECRET_ENV];
    vi.restoreAllMocks();
    await Promise.all(receivers.splice(0).map((r) => r.close()));
  });

  it('approval.requested arrives signed, with the fields approvers need and never args or result', async () => {
    const r = await receiver();
    const notifier = createNotifier(webhook(`${r.url}/hook`), OPTS);
    notifier.notify({ kind: 'approval.requested', approval: approval() });
    await notifier.close();

    expect(r.hits).toHaveLength(1);
    const hit = r.hits[0]!;
    expect(hit.path).toBe('/hook');
    expect(hit.headers['content-type']).toBe('application/json');
    expect(hit.headers['user-agent']).toBe('gatehouse/0.1.0');
    expect(hit.headers['x-gatehouse-event']).toBe('approval.requested');
    expect(hit.headers['x-gatehouse-delivery']).toMatch(
      /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/,
    );

    // The signature is HMAC-SHA256 over "<timestamp>.<raw body>", computed here independently.
    const timestamp = Number(hit.headers['x-gatehouse-timestamp']);
    expect(Math.abs(Date.now() / 1000 - timestamp)).toBeLessThan(60);
    expect(hit.headers['x-gatehouse-signature']).toBe(sign(SECRET, hit));
    expect(hit.headers['x-gatehouse-signature']).not.toBe(sign('another-secret-value', hit));

    expect(hit.body).not.toContain(ARGS_CANARY);
    expect(hit.body).not.toContain(RESULT_CANARY);
    const body = JSON.parse(hit.body) as Record<string, unknown>;
    expect(Object.keys(body).sort()).toEqual(
      [
        'text',
        'event',
        'id',
        'status',
        'requester',
        'tool',
        'target',
        'operation',
        'input',
        'purpose',
        'rule',
        'ruleReason',
        'approvers',
        'quorum',
        'createdAt',
        'expiresAt',
        'answers',
        'commands',
        'trace',
      ].sort(),
    );
    const approve =
      'gatehouse approvals approve apr_0123456789abcdefABCDEF --config /etc/gatehouse/gatehouse.yaml --server http://127.0.0.1:8080';
    const deny =
      "gatehouse approvals deny apr_0123456789abcdefABCDEF --reason '...' --config /etc/gatehouse/gatehouse.yaml --server http://127.0.0.1:8080";
    expect(body).toMatchObject({
      event: 'approval.requested',
      id: 'apr_0123456789abcdefABCDEF',
      status: 'pending',
      requester: { sub: 'alice', groups: ['dev'] },
      tool: 'postgres_query',
      target: 'app-db',
      operation: 'write',
      input: { sql: "UPDATE accounts SET plan = 'pro' WHERE id = 7" },
      purpose: 'upgrade a customer who paid',
      rule: 'sre-writes',
      ruleReason: 'writes on production need an SRE',
      approvers: { groups: ['sre'] },
      quorum: 1,
      createdAt: '2026-12-02T15:55:00.000Z',
      expiresAt: '2026-12-02T16:00:00.000Z',
      answers: [],
      commands: { approve, deny },
      trace: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
    });
    expect(body.text).toBe(
      'Approval requested: alice wants to run postgres_query on app-db (write) under rule ' +
        "sre-writes — `UPDATE accounts SET plan = 'pro' WHERE id = 7` — purpose: `upgrade a " +
        `customer who paid\`. Approve: \`${approve}\` · Deny: \`${deny}\`. ` +
        'Expires 2026-12-02T16:00:00Z.',
    );
  });

  it('the text is bounded, Slack markup is escaped, and hidden characters are shown', async () => {
    const r = await receiver();
    const notifier = createNotifier(webhook(r.url), OPTS);
    const sql =
      'UPDATE t SET a = 1 -- <!channel> & <https://evil.example|docs> `x`\nDROP TABLE users; ' +
      'SELECT 1; '.repeat(100);
    notifier.notify({ kind: 'approval.requested', approval: approval({ input: { sql } }) });
    await notifier.close();

    const body = JSON.parse(r.hits[0]!.body) as { text: string; input: unknown };
    // The exact statement stays in `input`; the text shows a bounded, inert rendering.
    expect(body.input).toEqual({ sql });
    expect(body.text).toContain('&lt;!channel&gt; &amp; &lt;https://evil.example|docs&gt;');
    expect(body.text).not.toMatch(/[<>\n]/);
    // A newline must not fold into a space: "-- ... DROP" would read as one comment.
    expect(body.text).toContain('\\nDROP TABLE users;');
    // A backtick in the statement cannot close the code span around it.
    expect(body.text).toContain('\u02cbx\u02cb');
    // Cut at 500 characters of statement, with an ellipsis, before the purpose.
    expect(body.text).toContain('…` — purpose: `upgrade a customer who paid`');
    expect(body.text.split('SELECT 1;').length - 1).toBeLessThan(50);
    expect(body.text.length).toBeLessThan(1_000);
  });

  it('approval.answered says who answered and carries the answers, without groups or channel', async () => {
    const r = await receiver();
    const notifier = createNotifier(webhook(r.url), OPTS);
    const answer = {
      by: 'bob',
      groups: ['sre'],
      answer: 'approve' as const,
      reason: 'ticket OPS-12',
      at: Date.parse('2026-12-02T15:57:30Z'),
      via: 'api' as const,
    };
    notifier.notify({
      kind: 'approval.answered',
      approval: approval({ status: 'approved', answers: [answer] }),
      answer,
    });
    notifier.notify({
      kind: 'approval.answered',
      approval: approval({
        status: 'denied',
        answers: [{ ...answer, answer: 'deny', reason: 'not during the freeze' }],
      }),
    });
    notifier.notify({
      kind: 'approval.answered',
      approval: approval({ quorum: 2, answers: [answer] }),
      answer,
    });
    await notifier.close();

    expect(r.hits).toHaveLength(3);
    const [approved, denied, halfway] = r.hits.map(
      (h) => JSON.parse(h.body) as { text: string; status: string; answers: unknown },
    );
    expect(r.hits.map((h) => h.headers['x-gatehouse-event'])).toEqual([
      'approval.answered',
      'approval.answered',
      'approval.answered',
    ]);
    expect(approved!.status).toBe('approved');
    expect(approved!.answers).toEqual([
      {
        by: 'bob',
        answer: 'approve',
        reason: 'ticket OPS-12',
        at: '2026-12-02T15:57:30.000Z',
      },
    ]);
    expect(approved!.text).toBe(
      'Approval apr_0123456789abcdefABCDEF approved by bob (ticket OPS-12): alice may now run ' +
        "postgres_query on app-db (write) under rule sre-writes — `UPDATE accounts SET plan = 'pro' " +
        'WHERE id = 7`.',
    );
    expect(denied!.status).toBe('denied');
    expect(denied!.text).toMatch(
      /^Approval apr_0123456789abcdefABCDEF denied by bob \(not during the freeze\): alice may not run postgres_query/,
    );
    // One of two approvals in: the others are still asked, with the commands.
    expect(halfway!.text).toMatch(
      /^Approval apr_0123456789abcdefABCDEF approved by bob \(ticket OPS-12\), 1 of 2 approvals: still pending, alice wants to run .* Approve: `gatehouse approvals approve apr_0123456789abcdefABCDEF /,
    );
    for (const hit of r.hits) expect(hit.headers['x-gatehouse-signature']).toBe(sign(SECRET, hit));
  });

  it('a receiver that answers 500 twice then 200 gets 3 attempts of one delivery, 1x then 2x apart', async () => {
    const r = await receiver((n) => (n <= 2 ? 500 : 200));
    const warn = vi.spyOn(log, 'warn');
    const notifier = createNotifier(webhook(r.url, { retries: 3 }), OPTS);
    notifier.notify({ kind: 'approval.requested', approval: approval() });
    await notifier.close();

    expect(r.hits).toHaveLength(3);
    const ids = new Set(r.hits.map((h) => h.headers['x-gatehouse-delivery']));
    expect(ids.size).toBe(1);
    expect(new Set(r.hits.map((h) => h.body)).size).toBe(1);
    // Each attempt is signed on its own (a retry can come long after the first timestamp).
    for (const hit of r.hits) expect(hit.headers['x-gatehouse-signature']).toBe(sign(SECRET, hit));
    expect(r.hits[1]!.at - r.hits[0]!.at).toBeGreaterThanOrEqual(20 - 2);
    expect(r.hits[2]!.at - r.hits[1]!.at).toBeGreaterThanOrEqual(40 - 2);

    expect(logged(warn)).toEqual([
      expect.objectContaining({ status: 500, attempt: 1, of: 4, webhook: r.url }),
      expect.objectContaining({ status: 500, attempt: 2, of: 4, webhook: r.url }),
    ]);
  });

  it('a receiver that never answers is cut at the timeout, and notify() returns at once', async () => {
    const r = await receiver(() => undefined);
    const warn = vi.spyOn(log, 'warn');
    const notifier = createNotifier(webhook(r.url, { timeout: 300 }), OPTS);

    const started = performance.now();
    notifier.notify({ kind: 'approval.requested', approval: approval() });
    expect(performance.now() - started).toBeLessThan(50);

    await notifier.close();
    const elapsed = performance.now() - started;
    expect(elapsed).toBeGreaterThanOrEqual(250);
    expect(elapsed).toBeLessThan(CLOSE_WAIT_MS);
    expect(r.hits).toHaveLength(1);
    expect(logged(warn)).toEqual([
      expect.objectContaining({ err: 'TimeoutError', attempt: 1, of: 1 }),
    ]);
  });

  it('an unreachable receiver is logged per attempt, without path, query or secret, then given up', async () => {
    const gone = await startReceiver();
    await gone.close();
    const warn = vi.spyOn(log, 'warn');
    const notifier = createNotifier(
      webhook(`${gone.url}/services/T000/B000/XXXXSECRETPATH?token=q1`, { retries: 2 }),
      OPTS,
    );
    notifier.notify({ kind: 'approval.requested', approval: approval() });
    await notifier.close();

    expect(logged(warn)).toEqual(
      [1, 2, 3].map(
        (attempt) =>
          expect.objectContaining({
            webhook: gone.url,
            err: 'ECONNREFUSED',
            attempt,
            of: 3,
          }) as unknown,
      ),
    );
    expect(warn.mock.calls.at(-1)![1]).toMatch(/given up/);
    const text = JSON.stringify(warn.mock.calls);
    for (const leak of [SECRET, 'XXXXSECRETPATH', 'token=q1', 'UPDATE accounts']) {
      expect(text).not.toContain(leak);
    }
  });

  it('a redirect is not followed: it is a failed attempt', async () => {
    const r = await receiver(() => 302);
    const warn = vi.spyOn(log, 'warn');
    const notifier = createNotifier(webhook(r.url), OPTS);
    notifier.notify({ kind: 'approval.expired', approval: approval({ status: 'expired' }) });
    await notifier.close();

    expect(r.hits.map((h) => h.path)).toEqual(['/']);
    expect(logged(warn)).toEqual([expect.objectContaining({ status: 302, attempt: 1 })]);
  });

  it('with its secret env var unset, nothing is sent (never unsigned) and the reason is logged', async () => {
    delete process.env[SECRET_ENV];
    const r = await receiver();
    const error = vi.spyOn(log, 'error').mockImplementation(() => undefined);
    const notifier = createNotifier(webhook(r.url, { retries: 2 }), OPTS);
    notifier.notify({ kind: 'approval.requested', approval: approval() });
    await notifier.close();

    expect(r.hits).toHaveLength(0);
    expect(logged(error)).toEqual([
      expect.objectContaining({
        err: expect.stringContaining(`environment variable ${SECRET_ENV} is not set`) as unknown,
      }),
    ]);
  });

  it('close() stops retrying: a pending backoff is cancelled and later events are dropped', async () => {
    const r = await receiver(() => 503);
    const notifier = createNotifier(webhook(r.url, { retries: 5 }), {
      ...OPTS,
      retryBaseMs: 60_000,
    });
    notifier.notify({ kind: 'approval.requested', approval: approval() });
    await vi.waitFor(() => expect(r.hits).toHaveLength(1));

    const started = performance.now();
    await notifier.close();
    expect(performance.now() - started).toBeLessThan(CLOSE_WAIT_MS + 500);
    notifier.notify({ kind: 'approval.requested', approval: approval() });
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(r.hits).toHaveLength(1);
  });

  it('without a webhook the notifier does nothing', async () => {
    const fetchImpl = vi.fn<typeof fetch>();
    const notifier = createNotifier({}, { ...OPTS, fetchImpl });
    notifier.notify({ kind: 'approval.requested', approval: approval() });
    await notifier.close();
    expect(fetchImpl).not.toHaveBeenCalled();
  });
});
