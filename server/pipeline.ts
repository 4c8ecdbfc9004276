import { randomBytes, randomUUID } from 'node:crypto';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import type { z } from 'zod';
import { DEFAULT_LIMITS, type Decision, type Principal } from '../policies/engine.js';
import type { AuditRecord } from '../recordings/audit.js';
import { SessionRecorder } from '../recordings/session.js';
import type { CallDescription, GovernedTool, ToolOutput } from '../tools/types.js';
import { boundCall, head, wellFormedDeep, type BoundedCall } from './bounds.js';
import { GovernanceError, toGovernanceError } from './kernel/errors.js';
import type { Identity } from './identity/identity.js';
import { log } from './kernel/log.js';
import { explainCall, listTargets, META_TOOLS } from './meta-tools.js';
import { fence, renderRows, renderText } from './render.js';
import type { RequestContext } from './request.js';
import type { Runtime } from './runtime.js';
import type { Session } from './session.js';

/**
 * The governed call, as a fixed chain of typed stages:
 *
 *   authenticate -> parse input -> decide -> (approve) -> execute -> mask -> render
 *
 * and, in `finally`, the audit outcome line and the session recording. A stage either returns
 * the context widened with its own field or throws a GovernanceError. If an audit write fails
 * the call fails (fail closed): nothing executes without its decision on record, and no
 * result is returned without its outcome on record.
 */

/**
 * The decision line is in the audit file before anything executes; its trip to disk rides
 * with the outcome line's fdatasync, which completes before the result is returned. That saves
 * one disk flush per call; what it gives up is the decision line alone surviving a power cut
 * in the milliseconds the call runs (a process crash loses nothing: the line is in the file).
 */
const NOT_YET_DURABLE = { durable: false } as const;

/** Tools of the contract that later releases add: refused by name, not as unknown. */
const LATER_TOOLS = new Set(['ssh_exec', 'kubectl']);

interface Call {
  callId: string;
  /** The tool name as sent when it is within bounds, else its bounded form (server/bounds.ts). */
  tool: string;
  args: unknown;
  /** What the evidence keeps of the call before its input parses: bounded, well-formed. */
  sent: BoundedCall;
  started: number;
  identity?: Identity;
  input?: unknown;
  description?: CallDescription;
  decision?: Decision;
  output?: ToolOutput;
  masked?: Record<string, number>;
  secrets: string[];
}

export async function handleToolCall(
  rt: Runtime,
  session: Session,
  tool: string,
  args: unknown,
  req: RequestContext,
): Promise<CallToolResult> {
  // Bounded before anything is written: every line this call leaves holds these forms.
  const sent = boundCall(tool, args);
  const call: Call = {
    callId: randomUUID(),
    tool: sent.tool,
    args,
    sent,
    started: Date.now(),
    secrets: [],
  };
  let result: CallToolResult;
  let failure: GovernanceError | undefined;
  try {
    call.identity = await authenticate(rt, session);
    result = await governed(rt, session, call, req);
  } catch (err) {
    failure = toGovernanceError(err);
    if (failure.code === 'INTERNAL' || failure.cause) {
      log.warn(
        { callId: call.callId, tool, code: failure.code, cause: describeCause(failure.cause) },
        'call failed',
      );
    }
    result = errorResult(rt, call, failure);
  }
  try {
    // A decision line may be missing when the call failed before policy (identity, input).
    if (!call.decision) {
      await rt.audit.append(auditRecord(session, call, 'decision', failure), NOT_YET_DURABLE);
    }
    await rt.audit.append(auditRecord(session, call, 'outcome', failure, result));
  } catch (err) {
    log.error(
      { callId: call.callId, err: describeCause(err) },
      'audit write failed; refusing the result',
    );
    failure = new GovernanceError(
      'INTERNAL',
      'the audit log could not be written; the result is withheld',
      { cause: err },
    );
    result = errorResult(rt, call, failure);
  }
  await record(rt, session, call, result);
  return result;
}

async function authenticate(rt: Runtime, session: Session): Promise<Identity> {
  const token = session.token();
  if (!token) throw new GovernanceError('UNAUTHENTICATED', 'no token presented');
  const identity = await rt.verifier.verify(token);
  if (session.identity && session.identity.sub !== identity.sub) {
    // One MCP session is one identity: a token for someone else cannot take over a session.
    throw new GovernanceError('UNAUTHENTICATED', 'token subject does not match this session');
  }
  session.identity ??= identity;
  return identity;
}

async function governed(
  rt: Runtime,
  session: Session,
  call: Call,
  req: RequestContext,
): Promise<CallToolResult> {
  const identity = call.identity!;
  const principal: Principal = {
    sub: identity.sub,
    groups: identity.groups,
    claims: identity.claims,
  };
  if (call.sent.problem) throw new GovernanceError('INVALID_INPUT', call.sent.problem);

  if (call.tool === META_TOOLS.list_targets.name || call.tool === META_TOOLS.explain.name) {
    const meta = META_TOOLS[call.tool];
    call.input = parseInput(meta.inputSchema, call.args);
    call.decision = builtinDecision(call.tool);
    await rt.audit.append(auditRecord(session, call, 'decision'), NOT_YET_DURABLE);
    const structured =
      call.tool === 'list_targets'
        ? listTargets(rt, principal)
        : await explainCall(
            rt.tools,
            rt.policies.engine,
            principal,
            call.input as { tool: string; input: Record<string, unknown> },
          );
    return {
      content: [{ type: 'text', text: JSON.stringify(structured, null, 2) }],
      structuredContent: structured,
    };
  }

  const tool = rt.tools.get(call.tool);
  if (!tool) {
    throw new GovernanceError(
      'INVALID_INPUT',
      LATER_TOOLS.has(call.tool)
        ? `tool ${call.tool} is not available in this release of Gatehouse`
        : `unknown tool ${JSON.stringify(call.tool)}`,
    );
  }
  call.input = parseInput(tool.inputSchema, call.args);
  call.description = await tool.describe(call.input);
  call.decision = rt.policies.engine.decide({
    principal,
    tool: tool.name,
    target: call.description.target,
    parts: call.description.parts,
  });
  await rt.audit.append(auditRecord(session, call, 'decision'), NOT_YET_DURABLE);

  const decision = call.decision;
  if (decision.effect === 'deny') {
    throw new GovernanceError('DENIED', decision.reason, { rule: decision.rule });
  }
  if (decision.effect === 'approve') {
    throw new GovernanceError(
      'APPROVAL_UNAVAILABLE',
      `rule ${decision.rule} requires approval, and this gateway cannot take approvals yet`,
      { rule: decision.rule },
    );
  }

  if (call.description.refusal) {
    throw new GovernanceError('INVALID_INPUT', call.description.refusal);
  }
  const output = await execute(rt, tool, call, req.signal);
  return maskAndRender(rt, call, output);
}

async function execute(
  rt: Runtime,
  tool: GovernedTool<unknown, unknown>,
  call: Call,
  signal: AbortSignal,
): Promise<ToolOutput> {
  const description = call.description!;
  const target = rt.config.targets[description.target];
  if (!target || target.kind !== tool.targetKind) {
    throw new GovernanceError(
      'INVALID_INPUT',
      `no ${tool.targetKind} target named ${JSON.stringify(description.target)}`,
    );
  }
  const { resolved, secrets } = await rt.resolveTarget(target);
  call.secrets = secrets;
  call.output = await tool.execute(call.input, {
    target: resolved,
    limits: call.decision!.limits,
    signal,
    description,
  });
  return call.output;
}

function maskAndRender(rt: Runtime, call: Call, output: ToolOutput): CallToolResult {
  const decision = call.decision!;
  const masker = rt.maskerFor(decision.mask);
  const target = call.description!.target;
  if (output.kind === 'rows') {
    const masked = masker.maskRows(output.columns, output.rows);
    call.masked = masked.counts;
    let rows = masked.value;
    let truncated = output.truncated;
    // The byte limit bounds what the agent's context receives, whatever the row count.
    while (
      rows.length > 0 &&
      Buffer.byteLength(JSON.stringify(rows)) > decision.limits.maxOutputBytes
    ) {
      rows = rows.slice(0, Math.floor(rows.length / 2));
      truncated = true;
    }
    const structured = {
      columns: output.columns.map((c) => ({ name: c.name, type: c.type })),
      rows,
      rowCount: output.rowCount === output.rows.length ? rows.length : output.rowCount,
      truncated,
      operation: output.operation,
    };
    return scrubSecrets(call.secrets, {
      content: [{ type: 'text', text: renderRows(target, structured, fenceNonce()) }],
      structuredContent: structured,
    });
  }
  const structured = { ...output.structured };
  const counts: Record<string, number> = {};
  for (const field of output.maskedFields) {
    const v = structured[field];
    if (typeof v !== 'string') continue;
    const m = masker.maskText(v);
    structured[field] = m.value;
    for (const [k, n] of Object.entries(m.counts)) counts[k] = (counts[k] ?? 0) + n;
  }
  call.masked = counts;
  return scrubSecrets(call.secrets, {
    content: [
      { type: 'text', text: renderText(target, structured, output.maskedFields, fenceNonce()) },
    ],
    structuredContent: structured,
  });
}

function parseInput<S extends z.ZodType>(schema: S, args: unknown): z.output<S> {
  const r = schema.safeParse(args ?? {});
  if (!r.success) {
    const detail = r.error.issues
      .slice(0, 5)
      .map((i) => `${i.path.length ? i.path.join('.') + ': ' : ''}${i.message}`)
      .join('; ');
    // zod quotes unknown keys: the text stays short whatever the caller sent.
    throw new GovernanceError('INVALID_INPUT', head(detail, 1000));
  }
  return r.data;
}

function builtinDecision(tool: string): Decision {
  return {
    effect: 'allow',
    rule: 'builtin',
    reason: `${tool} only reveals what this identity may do`,
    mask: [],
    limits: DEFAULT_LIMITS,
    operation: 'read',
  };
}

function errorResult(rt: Runtime, call: Call, err: GovernanceError): CallToolResult {
  let reason = err.message;
  let text =
    err.code === 'DENIED'
      ? `DENIED by rule ${err.rule ?? 'default-deny'}: ${reason}`
      : `${err.code}: ${reason}`;
  if (err.code === 'TARGET_ERROR') {
    // A target's own error text can quote row values: it passes through masking like a result,
    // and reaches the text only inside a fence (`invalid input syntax for type integer: "…"`
    // quotes a stored value, which can hold a forged fence-close and instructions).
    const mask = (s: string) =>
      call.decision ? rt.maskerFor(call.decision.mask).maskText(s).value : s;
    reason = mask(err.message);
    const untrusted = targetText(err);
    if (untrusted !== undefined) {
      const own = err.message.replace(untrusted, ' ').replace(/\s+/g, ' ').trim();
      const body = boundErrorText(mask(untrusted));
      text = [
        `TARGET_ERROR: ${mask(own)}`,
        fence(call.description?.target ?? 'the target', body.text, fenceNonce()),
        ...(body.cut ? [body.cut] : []),
      ].join('\n');
    } else {
      text = `TARGET_ERROR: ${reason}`;
    }
  }
  return scrubSecrets(call.secrets, {
    isError: true,
    content: [{ type: 'text', text }],
    structuredContent: {
      code: err.code,
      ...(err.rule ? { rule: err.rule } : {}),
      reason,
      callId: call.callId,
    },
  });
}

/**
 * The part of a TARGET_ERROR message the target wrote: `detail` when the executor names it;
 * otherwise the driver error's own message when the public message quotes it. A message that
 * quotes neither is the gateway's own text (`cannot connect to app-db`).
 */
function targetText(err: GovernanceError): string | undefined {
  if (err.detail) return err.detail;
  const cause = (err.cause as { message?: unknown } | undefined)?.message;
  if (typeof cause === 'string' && cause !== '' && err.message.includes(cause)) return cause;
  return undefined;
}

/** Target error text shown to the agent: at most this many UTF-16 units, then a note. */
const ERROR_TEXT_MAX = 2048;
function boundErrorText(s: string): { text: string; cut?: string } {
  if (s.length <= ERROR_TEXT_MAX) return { text: s };
  return {
    text: head(s, ERROR_TEXT_MAX),
    cut: `(the target's error text was cut at ${ERROR_TEXT_MAX} of ${s.length} characters)`,
  };
}

/**
 * Replaces every resolved credential in a result with `[secret]`, whatever a driver echoed
 * back. Secrets shorter than 4 characters are left alone: they would blank out ordinary text.
 */
export function scrubSecrets(all: readonly string[], result: CallToolResult): CallToolResult {
  const secrets = all.filter((s) => s.length >= 4);
  if (secrets.length === 0) return result;
  // Each secret as itself and as it reads inside JSON text (a text block that renders JSON
  // holds `pa\"ss` for `pa"ss`), longest first so no form is cut by a shorter one.
  const forms = [...new Set(secrets.flatMap((s) => [s, JSON.stringify(s).slice(1, -1)]))].sort(
    (a, b) => b.length - a.length,
  );
  // Fast path: in the serialized result a string value shows its forms escaped once more.
  const json = JSON.stringify(result);
  const esc = (x: string) => JSON.stringify(x).slice(1, -1);
  if (!forms.some((f) => json.includes(esc(f)))) return result;
  const clean = (v: unknown): unknown => {
    if (typeof v === 'string') {
      let out = v;
      for (const f of forms) if (out.includes(f)) out = out.split(f).join('[secret]');
      return out;
    }
    if (Array.isArray(v)) return v.map(clean);
    if (v && typeof v === 'object') {
      return Object.fromEntries(Object.entries(v).map(([k, x]) => [clean(k) as string, clean(x)]));
    }
    return v;
  };
  return clean(result) as CallToolResult;
}

function fenceNonce(): string {
  return randomBytes(6).toString('hex');
}

function auditRecord(
  session: Session,
  call: Call,
  kind: 'decision' | 'outcome',
  failure?: GovernanceError,
  result?: CallToolResult,
): AuditRecord {
  const d = call.decision;
  const decision = d
    ? { effect: d.effect, rule: d.rule, reason: d.reason }
    : {
        effect: 'deny',
        rule: failure?.code === 'UNAUTHENTICATED' ? 'identity' : 'input',
        reason: head(failure?.message ?? 'refused', 2048),
      };
  const rec: AuditRecord = {
    kind,
    callId: call.callId,
    session: session.id,
    sub: call.identity?.sub ?? '(unauthenticated)',
    groups: call.identity ? [...call.identity.groups] : [],
    tool: call.tool,
    target: call.description?.target ?? call.sent.target,
    operation: d?.operation ?? null,
    // A call refused before its input parsed is still recorded with what was sent (bounded).
    input: call.description?.auditInput ?? call.input ?? call.sent.args,
    decision,
    outcome: null,
    masked: null,
  };
  if (kind === 'outcome') {
    const o = call.output;
    rec.outcome = {
      status: result?.isError ? 'error' : 'ok',
      durationMs: Date.now() - call.started,
      ...(failure ? { code: failure.code } : {}),
      ...(o?.kind === 'rows' && !result?.isError
        ? { rows: (result?.structuredContent as { rows: unknown[] }).rows.length }
        : {}),
      ...(o?.kind === 'text'
        ? { bytes: o.bytes, ...(o.exitCode !== undefined ? { exitCode: o.exitCode } : {}) }
        : {}),
    };
    rec.masked = call.masked ?? {};
  }
  // Canonical JSON (RFC 8785) refuses lone surrogates; a token claim or an input can hold one.
  return wellFormedDeep(rec);
}

/**
 * The session's recording, created once its identity is known: at the start of a stdio
 * session (so a session without calls has its file too), else on its first verified call.
 */
export async function ensureRecorder(rt: Runtime, session: Session): Promise<void> {
  if (session.recorder || !session.identity) return;
  const identity = session.identity;
  session.recorderPending ??= SessionRecorder.create(rt.config.recordings.dir, {
    session: session.id,
    identity: { sub: identity.sub, groups: [...identity.groups] },
    client: session.clientInfo,
    start: session.startedAt,
    transport: session.transport,
  });
  session.recorder = await session.recorderPending;
}

async function record(
  rt: Runtime,
  session: Session,
  call: Call,
  result: CallToolResult,
): Promise<void> {
  try {
    await ensureRecorder(rt, session);
    await session.recorder?.record({
      callId: call.callId,
      tool: call.tool,
      request: call.sent.args,
      decision: call.decision
        ? { effect: call.decision.effect, rule: call.decision.rule, reason: call.decision.reason }
        : null,
      result,
      durationMs: Date.now() - call.started,
    });
  } catch (err) {
    // The audit log is the record of truth and was written; a recording failure is logged loudly.
    log.error({ callId: call.callId, err: describeCause(err) }, 'session recording failed');
  }
}

function describeCause(cause: unknown): unknown {
  if (cause instanceof Error)
    return { name: cause.name, message: cause.message, code: (cause as { code?: unknown }).code };
  return cause;
}
