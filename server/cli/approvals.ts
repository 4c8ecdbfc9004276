import { existsSync } from 'node:fs';
import { loadConfig } from '../config.js';
import { serverUrl } from '../runtime.js';
import { describeApproval } from '../approvals/form.js';
import { safe } from '../../recordings/commands.js';
import { command, configOption, UsageError, type Group, type Io } from './command.js';

/**
 * `gatehouse approvals`: out-of-band approvals through the running server (CONTRACT section 1),
 * never by writing its state file. The approver is whoever the token says (`--token` or
 * GATEHOUSE_TOKEN); the server decides whether that identity may answer.
 *
 * The server is `--server URL`, else GATEHOUSE_SERVER, else the config's http.publicUrl or
 * http.listen. Exit codes: 0 done, 1 refused by the server (not an approver, the requester
 * itself, already decided, not found), 2 usage, no token, or the server cannot be reached.
 */

const common = {
  server: {
    type: 'string',
    value: 'URL',
    help: 'the Gatehouse HTTP server (default: GATEHOUSE_SERVER, else http.publicUrl or http.listen of the config)',
  },
  token: {
    type: 'string',
    value: 'T',
    help: "the approver's own token (default: GATEHOUSE_TOKEN)",
  },
  config: configOption,
} as const;

const json = { type: 'boolean', default: false, help: 'print JSON' } as const;

interface Target {
  base: string;
  token: string;
}

async function target(values: {
  server?: string;
  token?: string;
  config: string;
}): Promise<Target> {
  const token = values.token ?? process.env.GATEHOUSE_TOKEN;
  if (!token) throw new UsageError('no token: pass --token T or set GATEHOUSE_TOKEN');
  let base = values.server ?? process.env.GATEHOUSE_SERVER;
  if (!base) {
    if (!existsSync(values.config)) {
      throw new UsageError(
        `no server: pass --server URL, set GATEHOUSE_SERVER, or run where ${values.config} is`,
      );
    }
    base = serverUrl(await loadConfig(values.config));
  }
  try {
    new URL(base);
  } catch {
    throw new UsageError(`--server ${JSON.stringify(base)} is not a URL`);
  }
  return { base: base.replace(/\/+$/, ''), token };
}

/** One API request. Returns the JSON body and status, or an exit code after saying why. */
async function call(
  t: Target,
  method: 'GET' | 'POST',
  path: string,
  io: Io,
  body?: unknown,
): Promise<{ status: number; body: Record<string, unknown> } | number> {
  let res: Response;
  try {
    res = await fetch(`${t.base}${path}`, {
      method,
      headers: {
        Authorization: `Bearer ${t.token}`,
        Accept: 'application/json',
        ...(body !== undefined ? { 'Content-Type': 'application/json' } : {}),
      },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
      redirect: 'error',
      signal: AbortSignal.timeout(30_000),
    });
  } catch (err) {
    const cause = (err as { cause?: { code?: string } }).cause?.code ?? (err as Error).message;
    io.err.write(`gatehouse approvals: cannot reach ${t.base} (${cause})\n`);
    return 2;
  }
  let parsed: Record<string, unknown> = {};
  try {
    parsed = (await res.json()) as Record<string, unknown>;
  } catch {
    // a proxy's HTML page, an empty 401: the status says enough
  }
  if (res.ok) return { status: res.status, body: parsed };
  const err = parsed.error as { message?: unknown } | undefined;
  const message =
    typeof err?.message === 'string'
      ? err.message
      : res.status === 401
        ? 'the token was refused (expired, wrong audience or issuer)'
        : `HTTP ${res.status}`;
  io.err.write(`gatehouse approvals: ${safe(message)}\n`);
  return res.status === 401 || res.status === 404 || res.status === 403 || res.status === 409
    ? 1
    : 2;
}

interface ApprovalView {
  id: string;
  status: string;
  requester: { sub: string; groups: string[] };
  tool: string;
  target: string | null;
  operation: string;
  input: unknown;
  purpose?: string;
  rule: string;
  ruleReason: string;
  quorum: number;
  answers: Array<{ by: string; answer: string; reason?: string; at: string }>;
  createdAt: string;
  expiresAt: string;
  mayAnswer: boolean;
}

function approvalText(a: ApprovalView): string {
  const answers = a.answers.map(
    (x) =>
      `  ${safe(x.answer)} by ${safe(x.by)} at ${safe(x.at)}${x.reason ? `: ${safe(x.reason)}` : ''}`,
  );
  return [
    `${safe(a.id)}  ${safe(a.status)}${a.mayAnswer ? '  (you may answer)' : ''}`,
    ...describeApproval({
      ...a,
      expiresAt: Date.parse(a.expiresAt),
    })
      .split('\n')
      .map((l) => `  ${l}`),
    ...answers,
  ].join('\n');
}

const list = command({
  name: 'list',
  summary: 'list the approvals you may answer, and your own requests',
  options: { ...common, json },
  async run({ values }, io) {
    const t = await target(values);
    const r = await call(t, 'GET', '/approvals', io);
    if (typeof r === 'number') return r;
    const approvals = (r.body.approvals ?? []) as ApprovalView[];
    if (values.json) {
      io.out.write(JSON.stringify(approvals, null, 2) + '\n');
      return 0;
    }
    if (approvals.length === 0) {
      io.out.write('no approvals\n');
      return 0;
    }
    io.out.write(approvals.map(approvalText).join('\n\n') + '\n');
    return 0;
  },
});

function answerCommand(verb: 'approve' | 'deny') {
  return command({
    name: verb,
    summary:
      verb === 'approve'
        ? 'approve a pending call (you cannot approve your own)'
        : 'deny a pending call; it will not run',
    positionals: [{ name: 'ID', help: 'the approval id (apr_…)', required: true }],
    options: {
      ...common,
      reason: { type: 'string', value: 'R', help: 'why (kept in the audit log)' },
      json,
    },
    async run({ values, positionals }, io) {
      const id = positionals[0] ?? '';
      const t = await target(values);
      const r = await call(t, 'POST', `/approvals/${encodeURIComponent(id)}/${verb}`, io, {
        ...(values.reason !== undefined ? { reason: values.reason } : {}),
      });
      if (typeof r === 'number') return r;
      const a = r.body.approval as ApprovalView;
      if (values.json) io.out.write(JSON.stringify(a, null, 2) + '\n');
      else {
        const got = a.answers.filter((x) => x.answer === 'approve').length;
        io.out.write(
          `${safe(a.id)}: ${safe(a.status)}` +
            (a.status === 'pending' ? ` (${got} of ${a.quorum} approvals)` : '') +
            '\n',
        );
      }
      return 0;
    },
  });
}

const grants = command({
  name: 'grants',
  summary: 'list the open grant windows you hold or may revoke',
  options: { ...common, json },
  async run({ values }, io) {
    const t = await target(values);
    const r = await call(t, 'GET', '/grants', io);
    if (typeof r === 'number') return r;
    const all = (r.body.grants ?? []) as Array<Record<string, string | null>>;
    if (values.json) {
      io.out.write(JSON.stringify(all, null, 2) + '\n');
      return 0;
    }
    if (all.length === 0) {
      io.out.write('no open grants\n');
      return 0;
    }
    for (const g of all) {
      io.out.write(
        `${safe(String(g.id))}  ${safe(String(g.sub))} may ${safe(String(g.operation))} with ${safe(String(g.tool))} on ` +
          `${safe(String(g.target ?? '-'))} (rule ${safe(String(g.rule))}) until ${safe(String(g.expiresAt))}\n`,
      );
    }
    return 0;
  },
});

const revoke = command({
  name: 'revoke',
  summary: 'close a grant window now',
  positionals: [{ name: 'GRANT_ID', help: 'the grant id (grt_…)', required: true }],
  options: common,
  async run({ values, positionals }, io) {
    const t = await target(values);
    const id = positionals[0] ?? '';
    const r = await call(t, 'POST', `/grants/${encodeURIComponent(id)}/revoke`, io, {});
    if (typeof r === 'number') return r;
    io.out.write(`${safe(id)}: revoked\n`);
    return 0;
  },
});

export const approvals: Group = {
  name: 'approvals',
  summary: 'answer approvals and manage grants through the running HTTP server',
  commands: [list, answerCommand('approve'), answerCommand('deny'), grants, revoke],
};
