import { ErrorCode, McpError } from '@modelcontextprotocol/sdk/types.js';
import type { Approval } from '../../policies/schema.js';
import { GovernanceError } from '../kernel/errors.js';
import { formatDuration } from '../kernel/units.js';
import { head } from '../kernel/text.js';
import type { RequestContext } from '../request.js';
import { approvalForm } from './form.js';
import { newId, type ApprovalService, type CallToApprove } from './service.js';

/**
 * In-band approval (`approvers: client`): the person at the requesting MCP client answers an
 * elicitation form. It is a confirmation by the requester's own human, not a second pair of
 * eyes (the answer carries the requester's identity); rules that need four eyes name
 * approvers instead.
 *
 * Only `accept` with decision `approve` runs the call. Decline, cancel, `deny`, an answer
 * that does not fit the form, silence past the rule's `timeout` (a late yes included: the
 * request is gone by then), a cancelled tool call, and a client that did not declare the
 * elicitation capability all leave the target untouched. Nothing here fails open.
 */

export interface InBandApproval {
  readonly id: string;
  readonly approver: string;
  readonly answer: 'approve';
  readonly via: 'elicitation';
  readonly stored: false;
}

/** What the recording keeps of an in-band approval: the form and the answer, as given. */
export interface ApprovalEvidence {
  form?: string;
  response?: string;
  reason?: string;
}

/** How often the waiting call tells the client it is still waiting. */
const PROGRESS_EVERY_MS = 5_000;

export async function askClient(
  c: { readonly req: RequestContext; readonly rt: { readonly approvals: ApprovalService } },
  call: CallToApprove,
  rule: Approval,
  evidence: ApprovalEvidence,
): Promise<InBandApproval> {
  const ruleId = call.rule;
  const elicit = c.req.elicit;
  if (!elicit) {
    throw new GovernanceError(
      'APPROVAL_UNAVAILABLE',
      `rule ${ruleId} needs the person at this MCP client to approve the call, and this client ` +
        'cannot show approval forms (it did not declare the elicitation capability); the call ' +
        'was not run. Use a client that supports elicitation, or ask for a rule with out-of-band approvers',
      { rule: ruleId },
    );
  }
  const approvals = c.rt.approvals;
  const id = newId('apr');
  const expiresAt = Date.now() + rule.timeout;
  await approvals.note(call, { id, approver: '-', answer: 'pending', event: 'requested' });
  const started = Date.now();
  const tell = () =>
    void c.req
      .progress?.(
        Math.round((Date.now() - started) / 1000),
        `waiting for your approval of ${id} (until ${new Date(expiresAt).toISOString()})`,
      )
      .catch(() => {});
  tell();
  const ticker = setInterval(tell, PROGRESS_EVERY_MS);
  ticker.unref();
  const form = approvalForm({
    id,
    requester: call.requester,
    tool: call.tool,
    target: call.target,
    operation: call.operation,
    input: call.input,
    rule: ruleId,
    ruleReason: call.ruleReason,
    ...(call.purpose !== undefined ? { purpose: call.purpose } : {}),
    expiresAt,
  });
  evidence.form = form.message;
  let answer: { action: string; content?: Record<string, unknown> };
  try {
    answer = await elicit(form, { signal: c.req.signal, timeoutMs: rule.timeout });
  } catch (err) {
    const refused = whyNoAnswer(err, c.req.signal, rule, ruleId, id);
    evidence.response = refused.code === 'APPROVAL_TIMEOUT' ? 'no answer (timeout)' : 'no answer';
    await approvals.note(call, {
      id,
      approver: '-',
      answer: refused.code === 'APPROVAL_TIMEOUT' ? 'timeout' : 'none',
      event: refused.code === 'APPROVAL_TIMEOUT' ? 'expired' : 'denied',
      reason: refused.message,
    });
    throw refused;
  } finally {
    clearInterval(ticker);
  }
  const decision = answer.content?.decision;
  const reasonGiven = answer.content?.reason;
  const reason =
    typeof reasonGiven === 'string' && reasonGiven !== '' ? head(reasonGiven, 500) : undefined;
  const yes = answer.action === 'accept' && decision === 'approve';
  evidence.response =
    answer.action === 'accept' ? `accept: ${head(String(decision), 40)}` : answer.action;
  if (reason !== undefined) evidence.reason = reason;
  await approvals.note(call, {
    id,
    approver: call.requester.sub,
    answer: yes ? 'approve' : answer.action === 'accept' ? 'deny' : answer.action,
    event: yes ? 'approved' : 'denied',
    ...(reason !== undefined ? { reason } : {}),
  });
  if (!yes) {
    // What the client sent, not what a person did: several clients answer decline or
    // cancel on their own without showing the form (README: client support).
    const what =
      answer.action === 'accept'
        ? `was answered ${JSON.stringify(typeof decision === 'string' ? head(decision, 40) : (decision ?? null))}`
        : answer.action === 'decline'
          ? 'was declined by the client'
          : 'was cancelled by the client';
    throw new GovernanceError(
      'APPROVAL_DECLINED',
      `approval form ${id} ${what} (rule ${ruleId})` +
        (reason !== undefined ? `: ${reason}` : '') +
        '; not approved, the call was not run',
      { rule: ruleId, approvalId: id },
    );
  }
  await approvals.grantInBand(call, id);
  return { id, approver: call.requester.sub, answer: 'approve', via: 'elicitation', stored: false };
}

function whyNoAnswer(
  err: unknown,
  signal: AbortSignal,
  rule: Approval,
  ruleId: string,
  id: string,
): GovernanceError {
  const opts = { rule: ruleId, approvalId: id };
  // A cancelled call first: the SDK may report the abort as a timeout of the form request.
  if (signal.aborted) {
    return new GovernanceError(
      'APPROVAL_DECLINED',
      `the call was cancelled before approval ${id} was answered; it was not run`,
      opts,
    );
  }
  if (err instanceof McpError && err.code === (ErrorCode.RequestTimeout as number)) {
    return new GovernanceError(
      'APPROVAL_TIMEOUT',
      `no answer to approval ${id} within ${formatDuration(rule.timeout)} (rule ${ruleId}); no answer means no, the call was not run`,
      opts,
    );
  }
  if (err instanceof McpError && err.code === (ErrorCode.InvalidParams as number)) {
    return new GovernanceError(
      'APPROVAL_DECLINED',
      `the client's answer to approval ${id} did not fit the form; the call was not run`,
      opts,
    );
  }
  return new GovernanceError(
    'APPROVAL_UNAVAILABLE',
    `the client could not show approval ${id} (${head(err instanceof Error ? err.message : String(err), 200)}); the call was not run`,
    { ...opts, cause: err },
  );
}
