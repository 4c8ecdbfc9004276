import { createHmac, randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { safe } from '../../recordings/commands.js';
import type { NotificationsConfig } from '../config.js';
import { log } from '../kernel/log.js';
import { resolveSecret } from '../kernel/secrets.js';
import { head } from '../kernel/text.js';
import { SERVER_INFO } from '../mcp.js';
import type { ApprovalAnswer, ApprovalRecord } from './types.js';

/**
 * Tells approvers that an approval waits for them, and when it is answered or expires, by
 * POSTing one JSON message to `notifications.webhook.url`. Its `text` alone is a Slack
 * incoming-webhook message (Mattermost and others read the same field); the other fields are
 * for a bot or a ticketing hook.
 *
 * The message shows what approvers are shown everywhere else: the record's `input` (the
 * statement as the audit log shows it), never its `args` or `result`. A chat channel is wider
 * than the approvers and keeps everything forever.
 *
 * Delivery never stands in a call's way: `notify` returns at once, each POST is bounded by
 * `timeout`, a failure (network error, timeout, any non-2xx, a redirect: not followed, so a
 * compromised receiver cannot bounce the signed body elsewhere) is retried `retries` more
 * times 1 s, 2 s, 4 s ... apart, then given up. Each failure is logged with the receiver's
 * origin, the status or error code and the attempt, never the body, the secret or the URL's
 * path and query: a Slack or Teams webhook URL's path is itself the credential.
 *
 * With `secret` set, every attempt is signed, and nothing is sent unsigned: a secret that
 * cannot be resolved (it is resolved per delivery, so it can be rotated) is logged as an error
 * and the delivery dropped. A receiver verifies a delivery so:
 *
 *   1. signed   = X-Gatehouse-Timestamp + "." + the raw request body, bytes as received
 *                 (not re-serialized JSON);
 *   2. expected = "sha256=" + hex(HMAC-SHA256(key = secret, signed));
 *   3. compare `expected` with X-Gatehouse-Signature in constant time
 *      (crypto.timingSafeEqual), and reject a timestamp more than 5 minutes from its clock
 *      (a replayed capture);
 *   4. treat a repeated X-Gatehouse-Delivery as the same message: retries reuse it (each
 *      retry is signed afresh, with its own timestamp).
 *
 *   const signed = `${req.headers['x-gatehouse-timestamp']}.${rawBody}`;
 *   const expected = 'sha256=' + createHmac('sha256', secret).update(signed).digest('hex');
 *   const ok = timingSafeEqual(Buffer.from(expected), Buffer.from(signature)); // equal lengths
 */

export type ApprovalEventKind = 'approval.requested' | 'approval.answered' | 'approval.expired';

export interface ApprovalEvent {
  kind: ApprovalEventKind;
  approval: ApprovalRecord;
  /** For `approval.answered`: the answer just given (else the record's last one is shown). */
  answer?: ApprovalAnswer;
}

export interface Notifier {
  /** Starts a delivery and returns: never throws, never blocks the caller. */
  notify(event: ApprovalEvent): void;
  /**
   * Waits (up to CLOSE_WAIT_MS) for deliveries in flight, then cancels what is left: no
   * further attempt is made, and later `notify` calls are dropped.
   */
  close(): Promise<void>;
}

export interface NotifierOptions {
  /** Where `{ file: }` secrets are resolved from. */
  configDir: string;
  /** The base URL approvers give the CLI (`--server`), e.g. `http://127.0.0.1:8080`. */
  serverUrl: string;
  /** The config file the commands name (`--config`), when there is one to name. */
  configFile?: string;
  fetchImpl?: typeof fetch;
  /** The first retry's delay; each next one doubles it. 1 s; tests make it small. */
  retryBaseMs?: number;
}

/** How long `close` lets deliveries in flight finish before it cancels them. */
export const CLOSE_WAIT_MS = 2_000;

/** How much of a statement the text shows; `input` carries all of it. */
const STATEMENT_CHARS = 500;
/** How much of a purpose or an answer's reason the text shows. */
const NOTE_CHARS = 200;

/** A no-op notifier when no webhook is configured. */
export function createNotifier(config: NotificationsConfig, opts: NotifierOptions): Notifier {
  if (!config.webhook) return { notify: () => undefined, close: async () => undefined };
  return webhookNotifier(config.webhook, opts);
}

type Webhook = NonNullable<NotificationsConfig['webhook']>;

function webhookNotifier(webhook: Webhook, opts: NotifierOptions): Notifier {
  const fetchImpl = opts.fetchImpl ?? fetch;
  const retryBaseMs = opts.retryBaseMs ?? 1_000;
  const origin = new URL(webhook.url).origin;
  const inFlight = new Set<Promise<void>>();
  const stop = new AbortController();
  let closing = false;

  async function deliver(event: ApprovalEvent): Promise<void> {
    const body = JSON.stringify(messageOf(event, opts));
    const delivery = randomUUID();
    const about = { webhook: origin, event: event.kind, approval: event.approval.id, delivery };
    let key: string | undefined;
    if (webhook.secret) {
      try {
        key = await resolveSecret(webhook.secret, opts.configDir, 'notifications.webhook.secret');
      } catch (err) {
        log.error({ ...about, err: errText(err) }, 'webhook: not sent, its secret is unavailable');
        return;
      }
    }
    const attempts = webhook.retries + 1;
    for (let attempt = 1; ; attempt++) {
      const failure = await post(body, delivery, event.kind, key);
      if (!failure) return;
      const last = attempt === attempts || stop.signal.aborted;
      log.warn(
        { ...about, ...failure, attempt, of: attempts },
        last ? 'webhook: delivery failed, given up' : 'webhook: delivery failed, will retry',
      );
      if (last) return;
      try {
        await sleep(retryBaseMs * 2 ** (attempt - 1), undefined, { signal: stop.signal });
      } catch {
        log.warn(about, 'webhook: delivery given up at shutdown');
        return;
      }
    }
  }

  /** One attempt: nothing when the receiver took it, else what went wrong. */
  async function post(
    body: string,
    delivery: string,
    kind: ApprovalEventKind,
    key: string | undefined,
  ): Promise<{ status: number } | { err: string } | undefined> {
    const headers: Record<string, string> = {
      'Content-Type': 'application/json',
      'User-Agent': `${SERVER_INFO.name}/${SERVER_INFO.version}`,
      'X-Gatehouse-Event': kind,
      'X-Gatehouse-Delivery': delivery,
    };
    if (key !== undefined) {
      const timestamp = Math.floor(Date.now() / 1000).toString();
      const mac = createHmac('sha256', key).update(`${timestamp}.${body}`).digest('hex');
      headers['X-Gatehouse-Timestamp'] = timestamp;
      headers['X-Gatehouse-Signature'] = `sha256=${mac}`;
    }
    // A timer of our own rather than AbortSignal.timeout() inside AbortSignal.any(): on Node 20
    // the timeout signal can be garbage-collected before it fires, and the POST then waits
    // for the receiver forever (seen in CI: a silent receiver held a delivery until close()).
    const attempt = new AbortController();
    const timer = setTimeout(
      () => attempt.abort(new DOMException('webhook timeout', 'TimeoutError')),
      webhook.timeout,
    );
    const onStop = () => attempt.abort(stop.signal.reason);
    if (stop.signal.aborted) onStop();
    else stop.signal.addEventListener('abort', onStop, { once: true });
    try {
      const res = await fetchImpl(webhook.url, {
        method: 'POST',
        headers,
        body,
        redirect: 'manual',
        signal: attempt.signal,
      });
      // Read nothing of the answer, but release the connection.
      await res.body?.cancel().catch(() => undefined);
      return res.ok ? undefined : { status: res.status };
    } catch (err) {
      return { err: errorCode(err) };
    } finally {
      clearTimeout(timer);
      stop.signal.removeEventListener('abort', onStop);
    }
  }

  return {
    notify(event) {
      if (closing) return;
      // deliver() builds the body before its first await: the caller may change the record next.
      const delivery = deliver(event).catch((err: unknown) =>
        log.error({ webhook: origin, err: errText(err) }, 'webhook: delivery failed'),
      );
      inFlight.add(delivery);
      void delivery.finally(() => inFlight.delete(delivery));
    },
    async close() {
      closing = true;
      if (inFlight.size > 0) {
        let timer: NodeJS.Timeout | undefined;
        const waited = new Promise<void>((resolve) => {
          timer = setTimeout(resolve, CLOSE_WAIT_MS);
        });
        await Promise.race([Promise.all(inFlight), waited]);
        clearTimeout(timer);
      }
      stop.abort();
      // Cancelled POSTs and backoffs settle at once.
      await Promise.all(inFlight);
    },
  };
}

/** The POST body. Fields are listed one by one: `args` and `result` must never ride along. */
function messageOf(event: ApprovalEvent, opts: NotifierOptions) {
  const a = event.approval;
  const commands = commandsFor(a.id, opts);
  return {
    text: slackEscape(textOf(event, commands)),
    event: event.kind,
    id: a.id,
    status: a.status,
    requester: { sub: a.requester.sub, groups: a.requester.groups },
    tool: a.tool,
    target: a.target,
    operation: a.operation,
    input: a.input,
    purpose: a.purpose,
    rule: a.rule,
    ruleReason: a.ruleReason,
    approvers: a.approvers,
    quorum: a.quorum,
    createdAt: new Date(a.createdAt).toISOString(),
    expiresAt: new Date(a.expiresAt).toISOString(),
    answers: a.answers.map((x) => ({
      by: x.by,
      answer: x.answer,
      reason: x.reason,
      at: new Date(x.at).toISOString(),
    })),
    commands,
    trace: a.trace,
  };
}

/** The CLI lines an approver pastes, with `--config` when the gateway has a file to name. */
function commandsFor(id: string, opts: NotifierOptions): { approve: string; deny: string } {
  const config = opts.configFile !== undefined ? ` --config ${shellWord(opts.configFile)}` : '';
  const tail = `${config} --server ${shellWord(opts.serverUrl)}`;
  return {
    approve: `gatehouse approvals approve ${shellWord(id)}${tail}`,
    deny: `gatehouse approvals deny ${shellWord(id)} --reason '...'${tail}`,
  };
}

/**
 * One paragraph for people. Everything an agent or a token chose (statement, purpose, `sub`,
 * reasons) is bounded and shown through `shown`; the statement and the purpose sit in code
 * spans, so a purpose cannot pose as the message's own words ("... Approve: `gatehouse
 * approvals approve apr_<another one>`").
 */
function textOf(event: ApprovalEvent, commands: { approve: string; deny: string }): string {
  const a = event.approval;
  const statement = shown(statementOf(a.input), STATEMENT_CHARS);
  const call =
    `${shown(a.tool)}${a.target !== null ? ` on ${shown(a.target)}` : ''} ` +
    `(${shown(a.operation)}) under rule ${shown(a.rule)} — \`${statement}\``;
  const who = shown(a.requester.sub);
  const expires = `Expires ${isoSeconds(a.expiresAt)}.`;
  const ask = `Approve: \`${commands.approve}\` · Deny: \`${commands.deny}\`. ${expires}`;

  if (event.kind === 'approval.requested') {
    const purpose = a.purpose ? ` — purpose: \`${shown(a.purpose, NOTE_CHARS)}\`` : '';
    const quorum = a.quorum > 1 ? ` Needs ${a.quorum} approvals.` : '';
    return `Approval requested: ${who} wants to run ${call}${purpose}.${quorum} ${ask}`;
  }
  if (event.kind === 'approval.expired') {
    return `Approval ${a.id} expired without a decision: ${who} may not run ${call}.`;
  }
  const answer = event.answer ?? a.answers.at(-1);
  if (!answer) return `Approval ${a.id} answered: ${a.status}.`;
  const by =
    `by ${shown(answer.by)}` + (answer.reason ? ` (${shown(answer.reason, NOTE_CHARS)})` : '');
  if (answer.answer === 'deny') return `Approval ${a.id} denied ${by}: ${who} may not run ${call}.`;
  if (a.status === 'pending') {
    const approvals = new Set(a.answers.filter((x) => x.answer === 'approve').map((x) => x.by));
    return (
      `Approval ${a.id} approved ${by}, ${approvals.size} of ${a.quorum} approvals: ` +
      `still pending, ${who} wants to run ${call}. ${ask}`
    );
  }
  return `Approval ${a.id} approved ${by}: ${who} may now run ${call}.`;
}

/** The SQL of a statement (and its parameters), else the input as compact JSON. */
function statementOf(input: unknown): string {
  if (typeof input === 'object' && input !== null && 'sql' in input) {
    const { sql, params } = input as { sql: unknown; params?: unknown };
    if (typeof sql === 'string') {
      return params === undefined ? sql : `${sql} with params ${JSON.stringify(params)}`;
    }
  }
  return JSON.stringify(input) ?? '';
}

/**
 * Untrusted text for the message: cut at `max` characters, newlines and invisible or bidi
 * characters as visible escapes (`SELECT 1 --\nDROP ...` must not read as one comment), and
 * each backtick as U+02CB, which looks the same but cannot close the code span around it and
 * turn the rest into formatting.
 */
function shown(text: string, max = NOTE_CHARS): string {
  const cut = text.length > max ? `${head(text, max)}…` : text;
  return safe(cut).replaceAll('`', '\u02cb');
}

/** Slack reads `&`, `<`, `>` as markup (`<!channel>`, `<https://x|a link>`): these three only. */
function slackEscape(text: string): string {
  return text.replaceAll('&', '&amp;').replaceAll('<', '&lt;').replaceAll('>', '&gt;');
}

/** A word for a POSIX shell, quoted only when it needs to be. */
function shellWord(word: string): string {
  return /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replaceAll("'", `'\\''`)}'`;
}

function isoSeconds(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/** `ECONNREFUSED`, `TimeoutError`: fetch hides the system error in its `cause`. */
function errorCode(err: unknown): string {
  const code = (err as { cause?: { code?: unknown } } | undefined)?.cause?.code;
  if (typeof code === 'string') return code;
  return err instanceof Error ? err.name : String(err);
}

function errText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
