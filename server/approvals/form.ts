import type { ElicitRequestFormParams } from '@modelcontextprotocol/sdk/types.js';
import { safe } from '../../recordings/commands.js';
import { head } from '../kernel/text.js';

/**
 * What a human is shown before saying yes: the elicitation form of an in-band approval
 * (`approvers: client`), and the text of `approvals list` and the webhook.
 *
 * Most of it is the agent's words (the statement, the purpose), so it is laid out where it
 * cannot pass for the gateway's own lines: every line of the statement is prefixed with
 * `  │ `, control, bidi and invisible characters are shown as escapes (a `\n` in the purpose
 * cannot forge a "Rule: ..." line, a right-to-left override cannot reverse `DROP`), and each
 * part is bounded.
 */

export interface ApprovalSummary {
  readonly id: string;
  readonly requester: { readonly sub: string; readonly groups: readonly string[] };
  readonly tool: string;
  readonly target: string | null;
  readonly operation: string;
  readonly input: unknown;
  readonly rule: string;
  readonly ruleReason: string;
  readonly purpose?: string;
  readonly expiresAt: number;
  readonly quorum?: number;
}

/**
 * The most a statement may take, as shown, for a person to be asked about it. A longer one is
 * refused rather than shown in part: an approver must see all of what runs (an agent padded
 * `WHERE id = 7` with 30 000 spaces and hid `OR true` past the cut of an earlier release).
 */
export const STATEMENT_SHOWN_MAX = 8_000;

/** Runs of blanks an agent could hide a tail behind are shown as their count. */
const BLANKS = /[ \t]{8,}/g;

/** The call as a block of quoted lines, whole. SQL shows as written, anything else as JSON. */
export function statementLines(input: unknown): string[] {
  const i = (input ?? {}) as Record<string, unknown>;
  const raw: string[] = [];
  if (typeof i.sql === 'string') {
    raw.push(...i.sql.split(/\r\n|\r|\n/));
    if (Array.isArray(i.params) && i.params.length > 0)
      raw.push(`params: ${JSON.stringify(i.params)}`);
  } else {
    raw.push(...(JSON.stringify(input, null, 2) ?? 'null').split('\n'));
  }
  const lines: string[] = [];
  let blank = 0;
  const flush = () => {
    if (blank > 2) lines.push(`⟨${blank} blank lines⟩`);
    else for (let k = 0; k < blank; k++) lines.push('');
    blank = 0;
  };
  for (const l of raw) {
    if (l.trim() === '') {
      blank++;
      continue;
    }
    flush();
    lines.push(l.replace(BLANKS, (m) => `⟨${m.length} blanks⟩`));
  }
  flush();
  return lines.map((l) => `  │ ${safe(l)}`);
}

/**
 * Why this call cannot be put to a person: its statement, as shown, is too long to read whole.
 * Undefined: it can.
 */
export function tooLongToShow(input: unknown): string | undefined {
  const shown = statementLines(input).join('\n').length;
  return shown > STATEMENT_SHOWN_MAX
    ? `the statement is too long to show an approver whole (${shown} characters as shown, at most ` +
        `${STATEMENT_SHOWN_MAX}); split it into smaller calls`
    : undefined;
}

export function describeApproval(a: ApprovalSummary): string {
  const who = `${safe(a.requester.sub)}${a.requester.groups.length ? ` (groups: ${a.requester.groups.map(safe).join(', ')})` : ''}`;
  return [
    `${who} asks to run ${safe(a.tool)} on ${safe(a.target ?? '-')} (${safe(a.operation)}):`,
    ...statementLines(a.input),
    `Rule: ${safe(a.rule)} — ${safe(head(a.ruleReason, 500))}`,
    a.purpose !== undefined
      ? `Purpose, in the agent's words: "${safe(head(a.purpose, 1_000))}"`
      : 'Purpose: none given',
    `Approval ${a.id}; open until ${new Date(a.expiresAt).toISOString()}` +
      (a.quorum && a.quorum > 1 ? `; needs ${a.quorum} approvers` : ''),
  ].join('\n');
}

/** The form an in-band approval sends: only `approve` runs the call. */
export function approvalForm(a: ApprovalSummary, answeringAs?: string): ElicitRequestFormParams {
  return {
    mode: 'form',
    message: [
      'Gatehouse: approve this call?',
      '',
      describeApproval(a),
      '',
      'Approve runs exactly this call, once. Anything else (deny, cancel, no answer) does not run it.',
      ...(answeringAs !== undefined ? [`You answer as ${safe(answeringAs)}.`] : []),
    ].join('\n'),
    requestedSchema: {
      type: 'object',
      properties: {
        decision: {
          type: 'string',
          title: 'Decision',
          description: 'approve runs this exact call once; deny refuses it',
          enum: ['approve', 'deny'],
          enumNames: ['Approve: run this exact call once', 'Deny'],
        },
        reason: {
          type: 'string',
          title: 'Reason (optional)',
          description: 'Kept in the audit log with your answer',
          maxLength: 500,
        },
      },
      required: ['decision'],
    },
  };
}
