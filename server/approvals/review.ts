import { z } from 'zod';
import { bindTool, type RegisteredTool, type ToolDefinition } from '../../tools/types.js';
import { GovernanceError } from '../kernel/errors.js';
import { head } from '../kernel/text.js';
import { approvalForm } from './form.js';
import { ApprovalRefused, type ApprovalService } from './service.js';

/**
 * `review_approvals`: an approver answers out-of-band approvals from its own MCP session. The
 * tool call only opens the forms; the answers are the human's, given in elicitation forms on
 * the approver's client, as the approver's identity (the session's token). A model can call
 * the tool but cannot answer for anyone: nothing in its arguments approves anything.
 *
 * The usual rules hold (the service checks them): never one's own request, only as an
 * approver of the rule, only while pending. A form left unanswered, declined or cancelled
 * answers nothing. One call shows at most MAX_FORMS forms and stays under the time an MCP
 * client waits for a tool call; call it again for the rest.
 */

export const ReviewApprovalsInput = z.strictObject({
  id: z
    .string()
    .regex(/^apr_[A-Za-z0-9_-]{1,64}$/, 'an approval id looks like apr_…')
    .optional()
    .describe('Review this approval only; by default, the pending ones you may answer'),
});
type ReviewApprovalsInput = z.infer<typeof ReviewApprovalsInput>;

const ReviewApprovalsOutput = z.object({
  reviewed: z.array(
    z.object({
      id: z.string(),
      answer: z.enum(['approve', 'deny', 'none']),
      status: z.string(),
      note: z.string().optional(),
    }),
  ),
  remaining: z.number().int(),
});

const MAX_FORMS = 3;
/** Time for all forms of one call: under the ~60 s an MCP client waits for a tool call. */
const BUDGET_MS = 50_000;
const FORM_MIN_MS = 5_000;

function reviewApprovalsTool(
  approvals: ApprovalService,
): ToolDefinition<ReviewApprovalsInput, null, null> {
  return {
    name: 'review_approvals',
    title: 'Review approvals',
    description:
      'For approvers: show the pending approvals you may answer as forms to the person at this client, ' +
      'who approves or denies each. Nothing is approved by calling this tool; only the answers in the forms count.',
    inputSchema: ReviewApprovalsInput,
    outputSchema: ReviewApprovalsOutput,
    annotations: {
      readOnlyHint: false,
      destructiveHint: false,
      idempotentHint: false,
      openWorldHint: false,
    },
    operations: ['read'],
    tags: [],
    describe(input) {
      return Promise.resolve({
        target: null,
        parts: [
          { operation: 'read', tags: [], reason: 'review_approvals opens approval forms only' },
        ],
        auditInput: input,
        plan: null,
      });
    },
    async execute(input, ctx) {
      const elicit = ctx.elicit;
      if (!elicit) {
        throw new GovernanceError(
          'APPROVAL_UNAVAILABLE',
          'this client cannot show approval forms (it did not declare the elicitation capability); ' +
            'answer with `gatehouse approvals list|approve|deny` instead',
        );
      }
      const me = { sub: ctx.principal.sub, groups: ctx.principal.groups };
      const open = (await approvals.visibleTo(me)).filter(
        (r) => r.mayAnswer && (input.id === undefined || r.id === input.id),
      );
      if (input.id !== undefined && open.length === 0) {
        throw new GovernanceError(
          'INVALID_INPUT',
          `no pending approval ${input.id} that ${me.sub} may answer`,
        );
      }
      const started = Date.now();
      const reviewed: z.infer<typeof ReviewApprovalsOutput>['reviewed'] = [];
      for (const rec of open.slice(0, MAX_FORMS)) {
        const left = BUDGET_MS - (Date.now() - started);
        if (left < FORM_MIN_MS || ctx.signal.aborted) break;
        const form = approvalForm(rec, me.sub);
        let answer: { action: string; content?: Record<string, unknown> };
        try {
          answer = await elicit(form, {
            signal: ctx.signal,
            timeoutMs: Math.min(left, rec.expiresAt - Date.now()),
          });
        } catch {
          reviewed.push({ id: rec.id, answer: 'none', status: rec.status, note: 'no answer' });
          continue;
        }
        const decision = answer.content?.decision;
        const reasonGiven = answer.content?.reason;
        const reason =
          typeof reasonGiven === 'string' && reasonGiven !== ''
            ? head(reasonGiven, 500)
            : undefined;
        if (answer.action !== 'accept' || (decision !== 'approve' && decision !== 'deny')) {
          reviewed.push({ id: rec.id, answer: 'none', status: rec.status, note: answer.action });
          continue;
        }
        try {
          const after = await approvals.answer(rec.id, me, decision, reason, 'elicitation');
          reviewed.push({ id: rec.id, answer: decision, status: after.status });
        } catch (err) {
          if (!(err instanceof ApprovalRefused)) throw err;
          reviewed.push({ id: rec.id, answer: 'none', status: rec.status, note: err.message });
        }
      }
      return {
        kind: 'gateway',
        structured: { reviewed, remaining: Math.max(0, open.length - reviewed.length) },
      };
    },
  };
}

/** The tool bound for a running gateway's registry. */
export function reviewApprovals(approvals: ApprovalService): RegisteredTool {
  return bindTool(reviewApprovalsTool(approvals), {
    targetKind: null,
    decidedBy: 'builtin',
    resolve: () => Promise.resolve({ target: null, secrets: [] }),
  });
}
