import { z } from 'zod';
import { GovernanceError } from '../../server/kernel/errors.js';
import type { ToolDefinition } from '../types.js';

export const AWAIT_APPROVAL = 'await_approval';

export const AwaitApprovalInput = z.strictObject({
  id: z
    .string()
    .regex(/^apr_[A-Za-z0-9_-]{1,64}$/, 'an approval id looks like apr_…')
    .describe('The approvalId of a call answered APPROVAL_PENDING'),
});
export type AwaitApprovalInput = z.infer<typeof AwaitApprovalInput>;

/**
 * `await_approval { id }` (CONTRACT section 3). The definition gives the tool its name,
 * schema and description; the call itself never reaches `describe`: the pipeline's parse
 * stage (server/pipeline.ts) replaces it with the held call the approval is for, which then
 * goes through policy again and, once approved, runs exactly once. Its result is the held
 * call's result, so its output is whatever that tool returns.
 */
export const awaitApprovalTool: ToolDefinition<AwaitApprovalInput, null, null> = {
  name: AWAIT_APPROVAL,
  title: 'Await an approval',
  description:
    'For a call answered APPROVAL_PENDING: wait for the human decision on its approvalId. Once ' +
    'approved, the exact held call runs (once) and this returns its result; if the decision is ' +
    'still pending when the wait ends, call await_approval again. Only the identity that made the ' +
    'call may await it.',
  inputSchema: AwaitApprovalInput,
  outputSchema: z.looseObject({}),
  annotations: {
    readOnlyHint: false,
    destructiveHint: true,
    idempotentHint: true,
    openWorldHint: false,
  },
  operations: ['read'],
  tags: [],
  describe() {
    // Reached only through explain and `policy explain`: a real call is replaced in parse.
    return Promise.reject(
      new GovernanceError(
        'INVALID_INPUT',
        'await_approval stands for a held call and has no decision of its own: explain the held call instead',
      ),
    );
  },
  execute() {
    return Promise.reject(
      new GovernanceError('INTERNAL', 'await_approval is answered by the approval stage'),
    );
  },
};
