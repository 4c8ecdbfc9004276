import { z } from 'zod';
import { Duration } from '../server/kernel/units.js';
import { parseSize } from '../server/kernel/units.js';
import { nearest } from '../server/kernel/yaml.js';
import { customPattern, DETECTOR_NAMES, PATTERN_NAME } from './masking.js';
import { MAX_PATTERN_LENGTH } from './pattern.js';

/** The policy file format (CONTRACT section 5). Strict: an unknown key is an error, not a no-op. */

const Size = z.union([z.number().int().positive(), z.string()]).transform((v, ctx) => {
  if (typeof v === 'number') return v;
  const n = parseSize(v);
  if (n === undefined) {
    ctx.addIssue({ code: 'custom', message: `"${v}" is not a size (e.g. 64KiB, 1MiB)` });
    return z.NEVER;
  }
  return n;
});

const Strings = z.array(z.string().min(1)).min(1);

export const Match = z.strictObject({
  subjects: Strings.optional(),
  groups: Strings.optional(),
  claims: z
    .record(z.string(), z.union([z.string(), z.number(), z.boolean(), z.array(z.string())]))
    .optional(),
  tools: Strings.optional(),
  targets: Strings.optional(),
  operations: Strings.optional(),
  /** Extension: any-of on classifier tags such as `unbounded`. */
  tags: Strings.optional(),
  resources: Strings.optional(),
  namespaces: Strings.optional(),
  commands: Strings.optional(),
});
export type Match = z.infer<typeof Match>;

export const Limits = z.strictObject({
  maxRows: z.number().int().positive().max(1_000_000).optional(),
  timeout: Duration.optional(),
  maxOutputBytes: Size.optional(),
});
export type Limits = z.infer<typeof Limits>;

/**
 * How a rule's approval is taken (CONTRACT section 5). `timeout`: how long the request stays
 * open; `hold`: how long one tool call waits for it before answering APPROVAL_PENDING (MCP
 * clients drop a call after about 60 s, so the default stays under that); `grant`: a window in
 * which the same identity repeats the same operation on the same target without asking again.
 */
export const Approval = z
  .strictObject({
    approvers: z.union([
      z.literal('client'),
      z.strictObject({ groups: Strings.optional(), subjects: Strings.optional() }),
    ]),
    timeout: Duration.default(300_000),
    hold: Duration.default(45_000),
    grant: Duration.optional(),
    quorum: z.number().int().min(1).max(10).default(1),
    requireReason: z.boolean().default(false),
  })
  .superRefine((a, ctx) => {
    if (a.approvers === 'client' && a.quorum > 1) {
      ctx.addIssue({
        code: 'custom',
        path: ['quorum'],
        message: 'quorum above 1 needs approvers other than the client (groups or subjects)',
      });
    }
    if (a.hold > 10 * 60_000) {
      ctx.addIssue({
        code: 'custom',
        path: ['hold'],
        message: 'hold is at most 10m (clients drop a tool call after about a minute)',
      });
    }
    if (a.timeout > 7 * 24 * 3_600_000) {
      ctx.addIssue({ code: 'custom', path: ['timeout'], message: 'timeout is at most 168h' });
    }
    if (a.grant !== undefined && a.grant > 24 * 3_600_000) {
      ctx.addIssue({ code: 'custom', path: ['grant'], message: 'grant is at most 24h' });
    }
  });
export type Approval = z.infer<typeof Approval>;

export const Rule = z
  .strictObject({
    id: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, 'rule ids are letters, digits, . _ -'),
    description: z.string().optional(),
    match: Match.default({}),
    effect: z.enum(['allow', 'deny', 'approve']),
    mask: z.array(z.string().min(1)).optional(),
    limits: Limits.optional(),
    approval: Approval.optional(),
  })
  .superRefine((rule, ctx) => {
    if (rule.effect === 'approve' && !rule.approval) {
      ctx.addIssue({
        code: 'custom',
        path: ['approval'],
        message: 'effect approve needs an approval block',
      });
    }
    if (rule.effect !== 'approve' && rule.approval) {
      ctx.addIssue({
        code: 'custom',
        path: ['approval'],
        message: 'approval is only meaningful with effect approve',
      });
    }
  });
export type Rule = z.infer<typeof Rule>;

/** A detector name; a misspelt one names the nearest real detector. */
const Detector = z.enum(DETECTOR_NAMES, {
  error: (issue) => {
    const near = typeof issue.input === 'string' ? nearest(issue.input, DETECTOR_NAMES) : undefined;
    return (
      `unknown detector ${JSON.stringify(issue.input)}` +
      (near === undefined
        ? `; detectors are ${DETECTOR_NAMES.join(', ')}`
        : ` (did you mean "${near}"?)`)
    );
  },
});

export const MaskProfileSchema = z.strictObject({
  detectors: z.array(Detector).default([]),
  columns: z.array(z.string().min(1)).default([]),
  style: z.enum(['redact', 'partial', 'pseudonym']).default('redact'),
  /**
   * Also treat as column rules the columns `gatehouse masking discover` finds on the call's
   * target (sampled once per target, then every few minutes), so lineage follows them too.
   */
  discover: z.boolean().default(false),
  /**
   * A value computed from a masked column: hidden (`mask`), or the statement refused (`deny`),
   * which also closes the side channels of the computation (its errors, time and size).
   */
  computed: z.enum(['mask', 'deny']).default('mask'),
  /**
   * Custom detectors: name -> pattern, in the linear-time subset policies/pattern.ts reads
   * (no anchors, lookaround or backreferences). Compiled here, so a bad one fails the load.
   */
  patterns: z
    .record(
      z.string().regex(PATTERN_NAME, {
        message: 'a pattern name is lower case letters, digits and _ (a letter first, at most 32)',
      }),
      z.string().min(1).max(MAX_PATTERN_LENGTH),
    )
    .default({})
    .superRefine((patterns, ctx) => {
      for (const [name, source] of Object.entries(patterns)) {
        try {
          customPattern(name, source);
        } catch (err) {
          ctx.addIssue({ code: 'custom', path: [name], message: (err as Error).message });
        }
      }
    }),
});

export const PolicyTest = z.strictObject({
  name: z.string().min(1),
  identity: z.strictObject({
    sub: z.string().min(1),
    groups: z.array(z.string()).default([]),
    claims: z.record(z.string(), z.unknown()).optional(),
  }),
  call: z.strictObject({ tool: z.string().min(1), input: z.record(z.string(), z.unknown()) }),
  expect: z.strictObject({
    effect: z.enum(['allow', 'deny', 'approve']),
    rule: z.string().optional(),
  }),
});
export type PolicyTest = z.infer<typeof PolicyTest>;

export const PolicyFile = z.strictObject({
  rules: z.array(Rule).default([]),
  masking: z.record(z.string().regex(/^[A-Za-z0-9_-]+$/), MaskProfileSchema).default({}),
  tests: z.array(PolicyTest).default([]),
});
export type PolicyFile = z.infer<typeof PolicyFile>;
