/**
 * One error type for every refusal or failure the agent can see. The `code` is the stable
 * first word of the tool result text (CONTRACT section 3); `message` is the public text;
 * `cause` is private and goes to the stderr log and the recording only.
 */
export const ERROR_CODES = [
  'UNAUTHENTICATED',
  'DENIED',
  'APPROVAL_PENDING',
  'APPROVAL_DECLINED',
  'APPROVAL_TIMEOUT',
  'APPROVAL_UNAVAILABLE',
  'INVALID_INPUT',
  'TARGET_ERROR',
  'TIMEOUT',
  'LIMIT_EXCEEDED',
  'INTERNAL',
] as const;

export type ErrorCode = (typeof ERROR_CODES)[number];

export class GovernanceError extends Error {
  readonly code: ErrorCode;
  readonly rule: string | undefined;
  /**
   * Text the target wrote (a PostgreSQL error message can quote a stored value), when the
   * public message includes it. It is untrusted: the agent sees it masked, bounded and fenced
   * as data, never as gateway text (a value could forge a fence-close and instructions).
   */
  readonly detail: string | undefined;
  /** The approval a held, declined or expired call is about (APPROVAL_*). */
  readonly approvalId: string | undefined;

  constructor(
    code: ErrorCode,
    message: string,
    options: { cause?: unknown; rule?: string; detail?: string; approvalId?: string } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'GovernanceError';
    this.code = code;
    this.rule = options.rule;
    this.detail = options.detail;
    this.approvalId = options.approvalId;
  }

  /** The text the agent sees: the code first, then the public message. */
  get publicText(): string {
    return `${this.code}: ${this.message}`;
  }
}

/**
 * Anything foreign becomes INTERNAL with a generic text: a raw driver error can carry a
 * connection string, a password or a file path, and none of that may reach the agent.
 */
export function toGovernanceError(err: unknown): GovernanceError {
  if (err instanceof GovernanceError) return err;
  return new GovernanceError('INTERNAL', 'internal error; see the gateway log', { cause: err });
}

/** A configuration or usage problem (exit code 2 in the CLI). */
export class ConfigError extends Error {
  constructor(
    message: string,
    readonly issues: string[] = [message],
  ) {
    super(message);
    this.name = 'ConfigError';
  }
}
