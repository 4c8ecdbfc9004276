import type { AuthInfo } from '@modelcontextprotocol/sdk/server/auth/types.js';
import type { ElicitRequestFormParams, ElicitResult } from '@modelcontextprotocol/sdk/types.js';

/**
 * What the transport knows about one tools/call request, handed to the pipeline: the SDK's
 * per-request context, reduced to what the stages use.
 */
export interface RequestContext {
  /** Aborted when the client sends notifications/cancelled for this request, or the session ends. */
  readonly signal: AbortSignal;
  /** The validated bearer token of this request (HTTP); absent over stdio. */
  readonly authInfo?: AuthInfo;
  /**
   * Ask the requesting client's human with an elicitation form. Absent when the client did not
   * declare the elicitation capability: a caller must then treat approval as unavailable.
   */
  readonly elicit?: (
    params: ElicitRequestFormParams,
    options: { signal: AbortSignal; timeoutMs: number },
  ) => Promise<ElicitResult>;
  /** The W3C `traceparent` of the request's `_meta`, when one came and is well-formed. */
  readonly trace?: string;
  /** A progress notification for this request, when the client asked for them (progressToken). */
  readonly progress?: (progress: number, message: string) => Promise<void>;
}

/** A context for calls that no client can cancel or answer (tests, benchmarks). */
export function detachedRequest(
  signal: AbortSignal = new AbortController().signal,
): RequestContext {
  return { signal };
}
