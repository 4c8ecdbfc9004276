import { randomBytes, randomUUID } from 'node:crypto';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import type { Decision, Principal } from '../policies/engine.js';
import type { AuditRecord } from '../recordings/audit.js';
import { SessionRecorder } from '../recordings/session.js';
import type {
  DescribedCall,
  OpenCall,
  ParsedCall,
  RegisteredTool,
  ToolOutput,
} from '../tools/types.js';
import type { Approval } from '../policies/schema.js';
import { AWAIT_APPROVAL, type AwaitApprovalInput } from '../tools/await_approval/definition.js';
import { askClient, type ApprovalEvidence } from './approvals/client.js';
import { tooLongToShow } from './approvals/form.js';
import { ApprovalService, type CallToApprove } from './approvals/service.js';
import type { ApprovalRecord } from './approvals/types.js';
import { boundCall, wellFormedDeep, type BoundedCall } from './bounds.js';
import type { Identity } from './identity/identity.js';
import { GovernanceError, toGovernanceError } from './kernel/errors.js';
import { log } from './kernel/log.js';
import { formatBytes } from './kernel/units.js';
import { head } from './kernel/text.js';
import { fence, renderRows, renderText } from './render.js';
import type { RequestContext } from './request.js';
import type { Runtime } from './runtime.js';
import type { Session } from './session.js';

/**
 * The governed call, as a fixed chain of typed stages:
 *
 *   authenticate -> parse -> describe -> decide -> approve -> connect -> execute -> mask -> render
 *
 * and, in `finally`, the audit outcome line and the session recording. Each stage takes the
 * call context and returns it widened with its own field, or throws a GovernanceError; the
 * runner (`handleToolCall`) keeps the furthest context reached, which is what the audit and
 * the recording then say. If an audit write fails the call fails (fail closed): nothing
 * executes without its decision on record, and no result is returned without its outcome on
 * record.
 */

/**
 * The decision line is in the audit file before anything executes; its trip to disk rides
 * with the outcome line's fdatasync, which completes before the result is returned. That saves
 * one disk flush per call; what it gives up is the decision line alone surviving a power cut
 * in the milliseconds the call runs (a process crash loses nothing: the line is in the file).
 */
const NOT_YET_DURABLE = { durable: false } as const;

/** What every stage has: the call as it arrived, bounded for the evidence. */
interface Received {
  readonly stage: 'received';
  readonly rt: Runtime;
  readonly session: Session;
  readonly req: RequestContext;
  readonly callId: string;
  readonly started: number;
  readonly args: unknown;
  /** What the evidence keeps of the call before its input parses: bounded, well-formed. */
  readonly sent: BoundedCall;
  /** Filled by an in-band approval: the form shown and the answer, for the recording. */
  readonly shownForm: ApprovalEvidence;
}
interface Authenticated extends Omit<Received, 'stage'> {
  readonly stage: 'authenticated';
  readonly identity: Identity;
  readonly principal: Principal;
}
interface Parsed extends Omit<Authenticated, 'stage'> {
  readonly stage: 'parsed';
  readonly tool: RegisteredTool;
  readonly parsed: ParsedCall;
  /** await_approval: the held call this request stands for (its tool and input are parsed). */
  readonly held?: ApprovalRecord;
}
interface Described extends Omit<Parsed, 'stage'> {
  readonly stage: 'described';
  readonly described: DescribedCall;
}
/** From here on the decision line is on record. */
interface Decided extends Omit<Described, 'stage'> {
  readonly stage: 'decided';
  readonly decision: Decision;
}
interface Approved extends Omit<Decided, 'stage'> {
  readonly stage: 'approved';
  /** The approval or grant the call runs under, when its rule asked for one. */
  readonly approval?: UsedApproval;
}

/** What the outcome line and the recording say about the approval a call ran under. */
interface UsedApproval {
  readonly id: string;
  /** The approvers' subs, comma-separated; for a grant, `grant:<id>`. */
  readonly approver: string;
  readonly answer: 'approve';
  readonly via: 'elicitation' | 'approvers' | 'grant';
  /** Stored approvals: the result is kept for a repeated await_approval. */
  readonly stored: boolean;
}

/**
 * Thrown by the approval stage when the approval was already used: the call that used it
 * answered this result, and a repeated await_approval answers it again instead of running the
 * call a second time.
 */
class AlreadyAnswered extends Error {
  constructor(
    readonly result: CallToolResult,
    /** The call as it stands: approved, under the approval another call already used. */
    readonly approved: Approved,
  ) {
    super('already answered');
  }
}
/** From here on the target's credentials are known, and scrubbed from whatever comes back. */
interface Connected extends Omit<Approved, 'stage'> {
  readonly stage: 'connected';
  readonly open: OpenCall;
}
interface Executed extends Omit<Connected, 'stage'> {
  readonly stage: 'executed';
  readonly output: ToolOutput;
}
interface Masked extends Omit<Executed, 'stage'> {
  readonly stage: 'masked';
  /** The output as the agent may see it. */
  readonly shown: ToolOutput;
  readonly masked: Record<string, number>;
}
interface Rendered extends Omit<Masked, 'stage'> {
  readonly stage: 'rendered';
  readonly result: CallToolResult;
}

type Reached =
  | Received
  | Authenticated
  | Parsed
  | Described
  | Decided
  | Approved
  | Connected
  | Executed
  | Masked
  | Rendered;

export async function handleToolCall(
  rt: Runtime,
  session: Session,
  tool: unknown,
  args: unknown,
  req: RequestContext,
): Promise<CallToolResult> {
  // Bounded before anything is written: every line this call leaves holds these forms.
  const received: Received = {
    stage: 'received',
    rt,
    session,
    req,
    callId: randomUUID(),
    started: Date.now(),
    args,
    sent: boundName(tool, args),
    shownForm: {},
  };
  let reached: Reached = received;
  const step = <T extends Reached>(next: T): T => {
    reached = next;
    return next;
  };
  let result: CallToolResult;
  let failure: GovernanceError | undefined;
  try {
    const authenticated = step(await authenticate(received));
    const parsed = step(await parse(authenticated));
    const described = step(await describe(parsed));
    const decided = step(await decide(described));
    const approved = step(await approve(decided));
    const connected = step(await connect(approved));
    const executed = step(await execute(connected));
    const masked = step(mask(executed));
    result = step(render(masked)).result;
  } catch (err) {
    if (err instanceof AlreadyAnswered) {
      // Its answer is that of the call that ran; this call's outcome is still on record.
      reached = err.approved;
      result = err.result;
    } else {
      failure = toGovernanceError(err);
      if (failure.code === 'INTERNAL' || failure.cause) {
        log.warn(
          {
            callId: received.callId,
            tool,
            code: failure.code,
            cause: causeForLog(reached, failure),
          },
          'call failed',
        );
      }
      result = errorResult(reached, failure);
    }
  }
  try {
    // A decision line is missing when the call failed before policy (identity, input).
    if (!hasDecision(reached)) {
      await rt.audit.append(auditRecord(reached, 'decision', failure), NOT_YET_DURABLE);
    }
    await rt.audit.append(auditRecord(reached, 'outcome', failure, result));
  } catch (err) {
    log.error(
      { callId: received.callId, err: describeCause(err) },
      'audit write failed; refusing the result',
    );
    failure = new GovernanceError(
      'INTERNAL',
      'the audit log could not be written; the result is withheld',
      { cause: err },
    );
    result = errorResult(reached, failure);
  }
  const used = usedApproval(reached);
  if (used?.stored) {
    // The approval is consumed: whatever this call answered is its one answer.
    await rt.approvals
      .saveResult(used.id, result)
      .catch((err: unknown) =>
        log.error(
          { callId: received.callId, err: describeCause(err) },
          'approval result not saved',
        ),
      );
  }
  await record(reached, result);
  return result;
}

/**
 * The call as sent, bounded. A `tools/call` whose name is not a string (the SDK's schema check
 * is bypassed so such a call is audited) is refused in parse with its own reason.
 */
function boundName(tool: unknown, args: unknown): BoundedCall {
  if (typeof tool === 'string') return boundCall(tool, args);
  // The params came as JSON, so any name but a missing one has a JSON text.
  const shown = tool === undefined ? 'missing' : JSON.stringify(tool);
  return {
    ...boundCall(`(tool name not a string: ${shown})`, args),
    problem: `name: the tool name must be a string (got ${tool === undefined ? 'none' : typeof tool})`,
  };
}

function hasDecision(
  c: Reached,
): c is Decided | Approved | Connected | Executed | Masked | Rendered {
  return 'decision' in c;
}

async function authenticate(c: Received): Promise<Authenticated> {
  const token = c.req.authInfo?.token ?? c.session.token();
  if (!token) throw new GovernanceError('UNAUTHENTICATED', 'no token presented');
  const identity = await c.rt.verifier.verify(token);
  if (c.session.identity && c.session.identity.sub !== identity.sub) {
    // One MCP session is one identity: a token for someone else cannot take over a session.
    throw new GovernanceError('UNAUTHENTICATED', 'token subject does not match this session');
  }
  c.session.identity ??= identity;
  return {
    ...c,
    stage: 'authenticated',
    identity,
    principal: { sub: identity.sub, groups: identity.groups, claims: identity.claims },
  };
}

async function parse(c: Authenticated): Promise<Parsed> {
  if (c.sent.problem) throw new GovernanceError('INVALID_INPUT', c.sent.problem);
  const tool = c.rt.decisions.find(c.sent.tool);
  const parsed = c.rt.decisions.parse(tool, c.args);
  if (tool.name !== AWAIT_APPROVAL) return { ...c, stage: 'parsed', tool, parsed };
  // await_approval stands for the held call: that call goes through policy again (a policy
  // changed meanwhile decides anew), and the approval stage waits for its approval.
  const { id } = parsed.input as AwaitApprovalInput;
  const held = await c.rt.approvals.get(id);
  // Someone else's approval is "not found" too: ids are not an oracle for other identities.
  if (!held || held.requester.sub !== c.identity.sub) {
    throw new GovernanceError('INVALID_INPUT', `no approval ${id} for ${c.identity.sub}`);
  }
  const heldTool = c.rt.decisions.find(held.tool);
  return {
    ...c,
    stage: 'parsed',
    tool: heldTool,
    parsed: c.rt.decisions.parse(heldTool, held.args),
    held,
  };
}

async function describe(c: Parsed): Promise<Described> {
  return {
    ...c,
    stage: 'described',
    described: await c.rt.decisions.describe(c.tool, c.parsed),
  };
}

/** Policy decides, and the decision goes on record before anything runs. */
async function decide(c: Described): Promise<Decided> {
  const decision = c.rt.decisions.decide(c.principal, c.tool, c.described.description);
  const decided: Decided = { ...c, stage: 'decided', decision };
  await c.rt.audit.append(auditRecord(decided, 'decision'), NOT_YET_DURABLE);
  return decided;
}

/**
 * The gate: a denied call stops here; the tool's own refusal (several statements, an
 * unsupported form) is checked here only, once policy has spoken (the agent learns policy's
 * answer first, as explain shows it) and before any human is asked to approve a call that
 * could not run; a rule that asks for approval gets one (server/approvals):
 *
 * - a grant window the rule opened for this identity, target and operation lets it through;
 * - `approvers: client`: the person at the requesting client answers an elicitation form,
 *   within the rule's `timeout`;
 * - approvers by group or subject: the call becomes a pending approval that others answer;
 *   this call waits at most the rule's `hold`, then answers APPROVAL_PENDING, and
 *   await_approval waits again. Once approved it runs exactly once, whichever call gets there.
 */
async function approve(c: Decided): Promise<Approved> {
  const { decision } = c;
  if (decision.effect === 'deny') {
    throw new GovernanceError('DENIED', decision.reason, { rule: decision.rule });
  }
  const refusal = c.described.description.refusal;
  if (refusal) throw new GovernanceError('INVALID_INPUT', refusal);
  if (decision.effect === 'allow') return { ...c, stage: 'approved' };
  const rule = decision.approval;
  if (!rule) {
    // The schema requires an approval block with effect approve; a bug guard.
    throw new GovernanceError('INTERNAL', `rule ${decision.rule} has no approval block`);
  }
  const call = callToApprove(c, rule);
  if (rule.requireReason && call.purpose === undefined) {
    throw new GovernanceError(
      'INVALID_INPUT',
      `rule ${decision.rule} needs a reason: call again with "reason" saying why this call is needed`,
      { rule: decision.rule },
    );
  }
  if (c.held) return { ...c, stage: 'approved', approval: await awaitHeld(c, c.held, rule) };
  const grant = await c.rt.approvals.findGrant(call);
  if (grant) {
    await c.rt.approvals.useGrant(grant, call);
    return {
      ...c,
      stage: 'approved',
      approval: {
        id: grant.approvalId,
        approver: `grant:${grant.id}`,
        answer: 'approve',
        via: 'grant',
        stored: false,
      },
    };
  }
  // A person approves what they are shown: all of it, or the call is not put to them.
  const unshowable = tooLongToShow(call.input);
  if (unshowable) {
    throw new GovernanceError(
      'INVALID_INPUT',
      `rule ${decision.rule} needs approval, and ${unshowable}`,
      {
        rule: decision.rule,
      },
    );
  }
  if (rule.approvers === 'client') {
    return { ...c, stage: 'approved', approval: await askClient(c, call, rule, c.shownForm) };
  }
  const { record } = await c.rt.approvals.request(call);
  return { ...c, stage: 'approved', approval: await holdFor(c, record.id, rule) };
}

function callToApprove(c: Decided, rule: Approval): CallToApprove {
  const purpose = (c.parsed.input as { reason?: unknown }).reason;
  return {
    requester: { sub: c.identity.sub, groups: c.identity.groups },
    session: c.session.id,
    callId: c.callId,
    tool: c.tool.name,
    target: c.described.description.target,
    operation: c.decision.operation,
    input: c.described.description.auditInput,
    args: c.parsed.input,
    rule: c.decision.rule,
    ruleReason: c.decision.reason,
    approval: rule,
    ...(typeof purpose === 'string' ? { purpose } : {}),
    ...(c.req.trace !== undefined ? { trace: c.req.trace } : {}),
  };
}

/**
 * await_approval: the held call, parsed and decided again, must still be the call that was
 * approved (same input, same policy, same rule); then it waits like the first call did.
 */
async function awaitHeld(c: Decided, held: ApprovalRecord, rule: Approval): Promise<UsedApproval> {
  const digest = ApprovalService.digest(
    c.tool.name,
    c.described.description.target,
    c.parsed.input,
  );
  if (
    digest !== held.digest ||
    held.rule !== c.decision.rule ||
    held.policyVersion !== c.rt.approvals.policyVersion
  ) {
    throw new GovernanceError(
      'APPROVAL_DECLINED',
      `approval ${held.id} was given under another policy or rule than the one in force now; ` +
        'call the tool again to ask for a new approval',
      { rule: c.decision.rule, approvalId: held.id },
    );
  }
  return holdFor(c, held.id, rule);
}

/** Waits up to the rule's hold for the approval's decision, then runs the call or says why not. */
async function holdFor(c: Decided, id: string, rule: Approval): Promise<UsedApproval> {
  const ruleId = c.decision.rule;
  let rec = await c.rt.approvals.wait(id, rule.hold, c.req.signal, (waited, r) => {
    void c.req
      .progress?.(
        Math.round(waited / 1000),
        `waiting for approval ${id} (${approversText(r.approvers)}; ${r.answers.length}/${r.quorum} so far)`,
      )
      .catch(() => {});
  });
  switch (rec.status) {
    case 'approved':
      if (await c.rt.approvals.consume(id, c.callId)) {
        return { id, approver: approvedBy(rec), answer: 'approve', via: 'approvers', stored: true };
      }
      // Another call used it between the read and the consume (answer what that call got),
      // or it expired meanwhile.
      rec = (await c.rt.approvals.get(id)) ?? rec;
      if (rec.status !== 'expired') return alreadyUsed(c, id, rule);
      return expired(rec, ruleId);
    case 'consumed':
      return alreadyUsed(c, id, rule);
    case 'denied': {
      const no = rec.answers.find((a) => a.answer === 'deny');
      throw new GovernanceError(
        'APPROVAL_DECLINED',
        `approval ${id} was denied by ${no?.by ?? 'an approver'}` +
          (no?.reason ? `: ${no.reason}` : '') +
          ` (rule ${ruleId})`,
        { rule: ruleId, approvalId: id },
      );
    }
    case 'expired':
      return expired(rec, ruleId);
    case 'pending':
      throw new GovernanceError(
        'APPROVAL_PENDING',
        `approval ${id} is waiting for ${approversText(rec.approvers)}` +
          (rec.quorum > 1 ? ` (${rec.answers.length} of ${rec.quorum} approvals so far)` : '') +
          ` under rule ${ruleId}; it stays open until ${new Date(rec.expiresAt).toISOString()}. ` +
          `The call has not run. Call await_approval with {"id": "${id}"} to wait for the decision ` +
          'and get the result of this exact call.',
        { rule: ruleId, approvalId: id },
      );
  }
}

function expired(rec: ApprovalRecord, ruleId: string): never {
  const approved = rec.answers.filter((a) => a.answer === 'approve').length >= rec.quorum;
  throw new GovernanceError(
    'APPROVAL_TIMEOUT',
    approved
      ? `approval ${rec.id} was given but not used before it expired at ` +
          `${new Date(rec.expiresAt).toISOString()} (rule ${ruleId}); call the tool again to ask anew`
      : `approval ${rec.id} was not answered before ${new Date(rec.expiresAt).toISOString()} ` +
          `(rule ${ruleId}); no answer means no`,
    { rule: ruleId, approvalId: rec.id },
  );
}

/** A used approval's answer again, once the call that used it has one (waits up to hold). */
async function alreadyUsed(c: Decided, id: string, rule: Approval): Promise<never> {
  const deadline = Date.now() + rule.hold;
  for (;;) {
    const rec = await c.rt.approvals.get(id);
    if (rec?.result !== undefined) {
      throw new AlreadyAnswered(rec.result as CallToolResult, {
        ...c,
        stage: 'approved',
        approval: {
          id,
          approver: approvedBy(rec),
          answer: 'approve',
          via: 'approvers',
          stored: false,
        },
      });
    }
    if (Date.now() >= deadline || c.req.signal.aborted) {
      throw new GovernanceError(
        'APPROVAL_PENDING',
        `approval ${id} was used by call ${rec?.consumedBy ?? 'another call'}, which has not ` +
          `answered yet; call await_approval with {"id": "${id}"} again for its result`,
        { rule: c.decision.rule, approvalId: id },
      );
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

function approversText(a: ApprovalRecord['approvers']): string {
  if (a === 'client') return 'the person at the client';
  const parts = [
    ...(a.groups ?? []).map((g) => `group ${g}`),
    ...(a.subjects ?? []).map((s) => `subject ${s}`),
  ];
  return `an approver (${parts.join(', ')})`;
}

function approvedBy(rec: ApprovalRecord): string {
  return rec.answers
    .filter((a) => a.answer === 'approve')
    .map((a) => a.by)
    .join(',');
}

async function connect(c: Approved): Promise<Connected> {
  return { ...c, stage: 'connected', open: await c.described.open() };
}

async function execute(c: Connected): Promise<Executed> {
  const output = await c.open.run({
    limits: c.decision.limits,
    signal: c.req.signal,
    principal: c.principal,
    rule: c.decision.rule,
    masked: c.decision.mask.length > 0,
    ...(c.req.elicit ? { elicit: c.req.elicit } : {}),
  });
  return { ...c, stage: 'executed', output };
}

/** What the agent may see: the rule's masking profiles over target data, and the byte limit. */
function mask(c: Executed): Masked {
  const masker = c.rt.maskerFor(c.decision.mask, c.described.description.target);
  const output = c.output;
  switch (output.kind) {
    case 'rows': {
      const masked = masker.maskRows(output.columns, output.rows, c.described.description.lineage);
      // The byte limit bounds what the agent's context receives, whatever the row count:
      // the longest prefix of rows that fits. A first row that alone is over it is an error
      // that says so, not "0 rows".
      const max = c.decision.limits.maxOutputBytes;
      let size = 2; // the brackets of the rows array
      let fit = 0;
      for (const row of masked.value) {
        size += Buffer.byteLength(JSON.stringify(row)) + (fit > 0 ? 1 : 0);
        if (size > max) break;
        fit++;
      }
      if (fit === 0 && masked.value.length > 0) {
        throw new GovernanceError(
          'LIMIT_EXCEEDED',
          `a single row of the result from ${c.described.description.target ?? 'the target'} is ` +
            `larger than the output limit of ${formatBytes(max)} (rule ${c.decision.rule})`,
          { rule: c.decision.rule },
        );
      }
      const rows = masked.value.slice(0, fit);
      const truncated = output.truncated || fit < masked.value.length;
      return {
        ...c,
        stage: 'masked',
        shown: {
          ...output,
          rows,
          truncated,
          rowCount: output.rowCount === output.rows.length ? rows.length : output.rowCount,
        },
        masked: masked.counts,
      };
    }
    case 'text': {
      const structured = { ...output.structured };
      const counts: Record<string, number> = {};
      for (const field of output.maskedFields) {
        const v = structured[field];
        if (typeof v !== 'string') continue;
        const m = masker.maskText(v);
        structured[field] = m.value;
        for (const [k, n] of Object.entries(m.counts)) counts[k] = (counts[k] ?? 0) + n;
      }
      return { ...c, stage: 'masked', shown: { ...output, structured }, masked: counts };
    }
    case 'gateway':
      // The gateway's own answer holds no target data.
      return { ...c, stage: 'masked', shown: output, masked: {} };
  }
}

function render(c: Masked): Rendered {
  const target = c.described.description.target ?? 'gatehouse';
  const shown = c.shown;
  let result: CallToolResult;
  switch (shown.kind) {
    case 'rows': {
      const structured = {
        columns: shown.columns.map((col) => ({ name: col.name, type: col.type })),
        rows: shown.rows,
        rowCount: shown.rowCount,
        truncated: shown.truncated,
        operation: shown.operation,
      };
      result = {
        content: [{ type: 'text', text: renderRows(target, structured, fenceNonce()) }],
        structuredContent: structured,
      };
      break;
    }
    case 'text':
      result = {
        content: [
          {
            type: 'text',
            text: renderText(target, shown.structured, shown.maskedFields, fenceNonce()),
          },
        ],
        structuredContent: shown.structured,
      };
      break;
    case 'gateway':
      result = {
        content: [{ type: 'text', text: JSON.stringify(shown.structured, null, 2) }],
        structuredContent: shown.structured,
      };
      break;
  }
  return { ...c, stage: 'rendered', result: scrubSecrets(c.open.secrets, result) };
}

function errorResult(c: Reached, err: GovernanceError): CallToolResult {
  let reason = err.message;
  let text =
    err.code === 'DENIED'
      ? `DENIED by rule ${err.rule ?? 'default-deny'}: ${reason}`
      : `${err.code}: ${reason}`;
  if (err.code === 'TARGET_ERROR') {
    // A target's own error text can quote row values: it passes through masking like a result,
    // and reaches the text only inside a fence (`invalid input syntax for type integer: "…"`
    // quotes a stored value, which can hold a forged fence-close and instructions).
    const masker = hasDecision(c)
      ? c.rt.maskerFor(c.decision.mask, c.described.description.target)
      : undefined;
    const mask = (s: string) => (masker ? masker.maskText(s).value : s);
    reason = mask(err.message);
    const untrusted = targetText(err);
    if (untrusted !== undefined) {
      // A statement over a masked column can make the server quote its value in the error
      // (`invalid input syntax for type integer: "<password>"`): its text is withheld, and so
      // is the SQLSTATE, which says which of several errors the value caused.
      const lineage = 'described' in c ? c.described.description.lineage : undefined;
      const withheld = masker !== undefined && lineage !== undefined && masker.touches(lineage);
      const own = withheld
        ? `${targetOf(c) ?? 'the target'}: the statement failed`
        : mask(err.message.replace(untrusted, ' ').replace(/\s+/g, ' ').trim());
      const body = withheld ? { text: WITHHELD } : boundErrorText(mask(untrusted));
      if (withheld) reason = `${own} ${WITHHELD}`;
      text = [
        `TARGET_ERROR: ${own}`,
        fence(targetOf(c) ?? 'the target', body.text, fenceNonce()),
        ...(body.cut ? [body.cut] : []),
      ].join('\n');
    } else {
      text = `TARGET_ERROR: ${reason}`;
    }
  }
  return scrubSecrets('open' in c ? c.open.secrets : [], {
    isError: true,
    content: [{ type: 'text', text }],
    structuredContent: {
      code: err.code,
      ...(err.rule ? { rule: err.rule } : {}),
      reason,
      callId: c.callId,
      ...(err.approvalId ? { approvalId: err.approvalId } : {}),
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

const WITHHELD =
  "(the target's error text and code are withheld: the statement reads a masked column, and they can reveal its values)";

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

/** The target the call named, once described; else what was sent (bounded). */
function targetOf(c: Reached): string | null | undefined {
  return 'described' in c ? c.described.description.target : c.sent.target;
}

function auditRecord(
  c: Reached,
  kind: 'decision' | 'outcome',
  failure?: GovernanceError,
  result?: CallToolResult,
): AuditRecord {
  const d = hasDecision(c) ? c.decision : undefined;
  const decision = d
    ? { effect: d.effect, rule: d.rule, reason: d.reason }
    : {
        effect: 'deny',
        rule: failure?.code === 'UNAUTHENTICATED' ? 'identity' : 'input',
        reason: head(failure?.message ?? 'refused', 2048),
      };
  const identity = 'identity' in c ? c.identity : undefined;
  const rec: AuditRecord = {
    kind,
    callId: c.callId,
    session: c.session.id,
    sub: identity?.sub ?? '(unauthenticated)',
    groups: identity ? [...identity.groups] : [],
    // await_approval is recorded as the held call it stands for (with its approval id).
    tool: 'tool' in c ? c.tool.name : c.sent.tool,
    target: targetOf(c) ?? null,
    operation: d?.operation ?? null,
    // A call refused before its input parsed is still recorded with what was sent (bounded).
    input:
      'described' in c
        ? c.described.description.auditInput
        : 'parsed' in c
          ? c.parsed.input
          : c.sent.args,
    decision,
    ...approvalOf(c, failure),
    ...purposeOf(c),
    ...(c.req.trace !== undefined ? { trace: c.req.trace } : {}),
    outcome: null,
    masked: null,
  };
  if (kind === 'outcome') {
    const o = 'output' in c ? c.output : undefined;
    const shown = 'shown' in c ? c.shown : undefined;
    rec.outcome = {
      status: result?.isError ? 'error' : 'ok',
      durationMs: Date.now() - c.started,
      ...(failure ? { code: failure.code, reason: outcomeReason(result, failure) } : {}),
      ...(shown?.kind === 'rows' && !result?.isError ? { rows: shown.rows.length } : {}),
      ...(o?.kind === 'text'
        ? { bytes: o.bytes, ...(o.exitCode !== undefined ? { exitCode: o.exitCode } : {}) }
        : {}),
    };
    rec.masked = 'masked' in c ? c.masked : {};
  }
  // Canonical JSON (RFC 8785) refuses lone surrogates; a token claim or an input can hold one.
  return wellFormedDeep(rec);
}

function usedApproval(c: Reached): UsedApproval | undefined {
  return 'approval' in c ? c.approval : undefined;
}

/** The approval a call ran under, or the one it was refused or held by. */
function approvalOf(c: Reached, failure?: GovernanceError): Pick<AuditRecord, 'approval'> {
  if ('approval' in c && c.approval) {
    return { approval: { id: c.approval.id, approver: c.approval.approver, answer: 'approve' } };
  }
  if (failure?.approvalId) {
    const answer =
      failure.code === 'APPROVAL_PENDING'
        ? 'pending'
        : failure.code === 'APPROVAL_TIMEOUT'
          ? 'timeout'
          : 'deny';
    return { approval: { id: failure.approvalId, approver: '-', answer } };
  }
  if ('held' in c && c.held)
    return { approval: { id: c.held.id, approver: '-', answer: 'pending' } };
  return {};
}

/** The agent's stated purpose (the governed tools' `reason`), once the input parsed. */
function purposeOf(c: Reached): Pick<AuditRecord, 'reason'> {
  if (!('parsed' in c)) return {};
  const reason = (c.parsed.input as { reason?: unknown } | null)?.reason;
  return typeof reason === 'string' ? { reason } : {};
}

/**
 * A failed call's reason on its outcome line: the text the agent saw (already masked and
 * scrubbed of secrets: a target's error text can quote stored values), bounded.
 */
function outcomeReason(result: CallToolResult | undefined, failure: GovernanceError): string {
  const shown = (result?.structuredContent as { reason?: unknown } | undefined)?.reason;
  return head(typeof shown === 'string' ? shown : failure.code, 2048);
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

function withForm(
  a: Pick<AuditRecord, 'approval'>,
  shown: ApprovalEvidence,
): { approval?: NonNullable<AuditRecord['approval']> & ApprovalEvidence } {
  return a.approval ? { approval: { ...a.approval, ...shown } } : {};
}

/** The approval id and code of an error result, for the recording. */
function failureOf(result: CallToolResult): GovernanceError | undefined {
  const sc = result.structuredContent as { code?: unknown; approvalId?: unknown } | undefined;
  if (!result.isError || typeof sc?.approvalId !== 'string') return undefined;
  return new GovernanceError(sc.code as GovernanceError['code'], '', { approvalId: sc.approvalId });
}

async function record(c: Reached, result: CallToolResult): Promise<void> {
  try {
    await ensureRecorder(c.rt, c.session);
    const d = hasDecision(c) ? c.decision : undefined;
    await c.session.recorder?.record({
      callId: c.callId,
      tool: c.sent.tool,
      request: c.sent.args,
      decision: d ? { effect: d.effect, rule: d.rule, reason: d.reason } : null,
      ...withForm(approvalOf(c, failureOf(result)), c.shownForm),
      result,
      durationMs: Date.now() - c.started,
    });
  } catch (err) {
    // The audit log is the record of truth and was written; a recording failure is logged loudly.
    log.error({ callId: c.callId, err: describeCause(err) }, 'session recording failed');
  }
}

/**
 * A failure's cause for the operator's log. The log is kept like the audit log: a target's
 * error text can quote a stored value (`invalid input syntax for type integer: "<value>"`),
 * so under masking it is masked, and withheld when the statement touches a masked column (the
 * SQLSTATE stays: it is the operator's clue, and the log is not the agent's); the credentials
 * the call used are scrubbed from it.
 */
function causeForLog(c: Reached, failure: GovernanceError): unknown {
  const cause = describeCause(failure.cause);
  if (failure.code !== 'TARGET_ERROR' || !isObj(cause) || typeof cause.message !== 'string') {
    return cause;
  }
  let message = cause.message;
  if (hasDecision(c)) {
    const masker = c.rt.maskerFor(c.decision.mask, c.described.description.target);
    const lineage = c.described.description.lineage;
    if (masker.active && lineage !== undefined && masker.touches(lineage)) {
      message = '[withheld: the statement touches a masked column]';
    } else if (masker.active) message = masker.maskText(message).value;
  }
  for (const secret of 'open' in c ? c.open.secrets : [])
    message = message.split(secret).join('[secret]');
  return { ...cause, message };
}

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null;
}

function describeCause(cause: unknown): unknown {
  if (cause instanceof Error)
    return { name: cause.name, message: cause.message, code: (cause as { code?: unknown }).code };
  return cause;
}
