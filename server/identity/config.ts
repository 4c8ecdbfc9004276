import { z } from 'zod';
import { SecretRef } from '../kernel/secrets.js';

/**
 * The `identity:` section, in one place for both readers: `gatehouse.yaml` (loadConfig, so
 * `policy check` too) and the token verifier (createVerifier). Both check the same rules,
 * written once in `identityRules`; they differ only where the verifier sees more: the HMAC
 * secret's value instead of its reference.
 */

export const ALGORITHMS = [
  'RS256',
  'RS384',
  'RS512',
  'PS256',
  'PS384',
  'PS512',
  'ES256',
  'ES384',
  'ES512',
  'EdDSA',
  'HS256',
  'HS384',
  'HS512',
] as const;

const HMAC_ALG = /^HS(256|384|512)$/;
/** RFC 7518 3.2: an HMAC key at least as long as the hash output (brute force). */
export const MIN_HMAC_SECRET_BYTES = 32;
const DEFAULT_ALGORITHMS = ['RS256', 'ES256', 'EdDSA'] as const;

/**
 * `identity.groupsSeparator`: how a string groups claim is split (absent: never split, the
 * string is one group). A letter or digit would cut group names apart, so it must have a
 * character that is neither.
 */
export const GroupsSeparator = z
  .string({ error: 'expected a string such as "," or " "' })
  .min(1, 'must not be empty')
  .max(8, 'at most 8 characters')
  .refine((s) => !/^[\p{L}\p{N}]+$/u.test(s), 'must not be made of letters or digits only');

// alg none means "no signature": a verifier that lists it accepts anything.
const Algorithm = z.enum(ALGORITHMS, {
  error: (issue) =>
    String(issue.input).toLowerCase() === 'none'
      ? "algorithm 'none' is never accepted"
      : `unsupported algorithm ${JSON.stringify(issue.input)}`,
});

const fields = {
  issuer: z.string().min(1).optional(),
  audience: z.string().min(1),
  jwks: z.string().min(1).optional(),
  algorithms: z.array(Algorithm).min(1, 'at least one algorithm is required'),
  groupsClaim: z.string().min(1),
  groupsSeparator: GroupsSeparator.optional(),
  clockToleranceSec: z.number().int().min(0).max(300),
};

interface RuleInput {
  issuer?: string | undefined;
  jwks?: string | undefined;
  algorithms: readonly string[];
  hmacSecret?: unknown;
  devIssuer?: { issuer: string } | undefined;
}

/**
 * What the verifier can really do with a configuration. The configured issuer's HS* tokens
 * are checked with hmacSecret only, everything else with its JWKS only (algorithm confusion),
 * so an issuer listing only HS* needs no JWKS, and one listing any other algorithm does:
 * without it, those tokens could never verify.
 */
function identityRules(id: RuleInput, ctx: z.RefinementCtx): void {
  const hmac = id.algorithms.filter((a) => HMAC_ALG.test(a));
  const asymmetric = id.algorithms.filter((a) => !HMAC_ALG.test(a));
  if (id.issuer === undefined && id.devIssuer === undefined) {
    ctx.addIssue({
      code: 'custom',
      path: ['issuer'],
      message: 'required unless only devIssuer is used',
    });
  }
  if (hmac.length > 0 && id.hmacSecret === undefined) {
    ctx.addIssue({
      code: 'custom',
      path: ['algorithms'],
      message: `${hmac.join(', ')} listed without identity.hmacSecret`,
    });
  }
  if (id.issuer !== undefined) {
    if (id.jwks === undefined && asymmetric.length > 0) {
      ctx.addIssue({
        code: 'custom',
        path: ['jwks'],
        message: `required when issuer is set with ${asymmetric.join(', ')} (URL or file of a JWKS)`,
      });
    }
    if (id.devIssuer !== undefined && id.devIssuer.issuer === id.issuer) {
      ctx.addIssue({
        code: 'custom',
        path: ['devIssuer', 'issuer'],
        message: 'must differ from identity.issuer',
      });
    }
  } else if (id.jwks !== undefined) {
    // The dev issuer has its own key: a JWKS without an issuer would be trusted for nobody.
    ctx.addIssue({ code: 'custom', path: ['issuer'], message: 'required with identity.jwks' });
  }
  if (id.jwks !== undefined && /^https?:\/\//i.test(id.jwks) && !URL.canParse(id.jwks)) {
    ctx.addIssue({ code: 'custom', path: ['jwks'], message: 'not a valid URL' });
  }
}

/** `identity:` in gatehouse.yaml, with its defaults; the HMAC secret is a reference. */
export const IdentitySchema = z
  .strictObject({
    ...fields,
    audience: fields.audience.default('gatehouse'),
    algorithms: fields.algorithms.default([...DEFAULT_ALGORITHMS]),
    hmacSecret: SecretRef.optional(),
    groupsClaim: fields.groupsClaim.default('groups'),
    clockToleranceSec: fields.clockToleranceSec.default(30),
    devIssuer: z
      .strictObject({
        keyFile: z.string().min(1),
        issuer: z.string().min(1).default('urn:gatehouse:dev'),
      })
      .optional(),
  })
  .superRefine(identityRules);
export type IdentitySection = z.output<typeof IdentitySchema>;

/**
 * What createVerifier takes: the same section once loaded (paths resolved against the
 * config's folder, the HMAC secret resolved to its value, so its length can be checked).
 */
export const VerifierConfigSchema = z
  .strictObject({
    ...fields,
    hmacSecret: z
      .string()
      .refine(
        (s) => Buffer.byteLength(s) >= MIN_HMAC_SECRET_BYTES,
        `must be at least ${MIN_HMAC_SECRET_BYTES} bytes`,
      )
      .optional(),
    devIssuer: z.strictObject({ keyFile: z.string().min(1), issuer: z.string().min(1) }).optional(),
  })
  .superRefine(identityRules);
