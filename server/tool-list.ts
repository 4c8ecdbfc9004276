import type { Tool } from '@modelcontextprotocol/sdk/types.js';
import { z } from 'zod';
import { ERROR_CODES } from './kernel/errors.js';
import type { Runtime } from './runtime.js';

function jsonSchema(schema: z.ZodType, io: 'input' | 'output'): Tool['inputSchema'] {
  const { $schema: _ignored, ...rest } = z.toJSONSchema(schema, {
    io,
    unrepresentable: 'any',
  }) as Record<string, unknown>;
  return rest as Tool['inputSchema'];
}

/**
 * Errors are tool results too, with `structuredContent` `{ code, rule?, reason, callId }`
 * (CONTRACT section 3). Clients validate structuredContent against outputSchema even on
 * errors, so every output schema admits the error shape as an alternative.
 */
export const ErrorContent = z.strictObject({
  code: z.enum(ERROR_CODES),
  rule: z.string().optional(),
  reason: z.string(),
  callId: z.string(),
  /** APPROVAL_PENDING (and the other APPROVAL_* codes): the approval to await or look up. */
  approvalId: z.string().optional(),
});

function outputSchema(schema: z.ZodType): Tool['outputSchema'] {
  return {
    type: 'object',
    anyOf: [jsonSchema(schema, 'output'), jsonSchema(ErrorContent, 'output')],
  };
}

export function listTools(rt: Pick<Runtime, 'tools'>): Tool[] {
  // The registry lists the gateway's own tools first: an agent reading the list meets
  // list_targets and explain before the rest.
  return [...rt.tools.values()].map((t) => ({
    name: t.name,
    title: t.title,
    description: t.description,
    inputSchema: jsonSchema(t.inputSchema, 'input'),
    outputSchema: outputSchema(t.outputSchema),
    annotations: { title: t.title, ...t.annotations },
  }));
}
