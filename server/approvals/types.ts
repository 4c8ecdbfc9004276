/**
 * Approvals and grants as the state store holds them (CONTRACT sections 1, 3, 5).
 *
 * An approval is one exact call waiting for people: who asked (`requester`), what (`tool`,
 * `target`, the canonical input's `digest`, the policy version), under which rule, who may
 * answer (`approvers`, `quorum`), until when (`expiresAt`). Its life:
 *
 *   pending -> approved -> consumed        (the held call ran, once)
 *           -> denied                      (one "no" from an eligible approver is enough)
 *           -> expired                     (no decision before expiresAt: denied)
 *
 * A grant is a window opened by an approval whose rule says `grant: 15m`: the same identity
 * may repeat calls of the same operation on the same target, under the same rule, without
 * asking again until `expiresAt`, unless it is revoked.
 *
 * Times are epoch milliseconds (Date.now()), so tests can drive them with fake timers.
 */

export type ApprovalStatus = 'pending' | 'approved' | 'denied' | 'expired' | 'consumed';

/** Who may answer: the person at the requesting client, or other identities. */
export type Approvers = 'client' | { groups?: readonly string[]; subjects?: readonly string[] };

export interface ApprovalAnswer {
  /** The approver's `sub` (for `client`: the requester's own, answering at its client). */
  by: string;
  groups: readonly string[];
  answer: 'approve' | 'deny';
  reason?: string;
  /** epoch ms */
  at: number;
  /** How the answer came: the CLI / HTTP API, or an elicitation form. */
  via: 'api' | 'elicitation';
}

export interface ApprovalRecord {
  /** `apr_` + 22 url-safe random characters. */
  readonly id: string;
  status: ApprovalStatus;
  readonly createdAt: number;
  readonly expiresAt: number;
  readonly requester: { readonly sub: string; readonly groups: readonly string[] };
  /** The requesting MCP session and call (evidence). */
  readonly session: string;
  readonly callId: string;
  readonly tool: string;
  readonly target: string | null;
  readonly operation: string;
  /** The input as the audit log shows it (SQL text, argv): what approvers are shown. */
  readonly input: unknown;
  /** The arguments exactly as parsed: what runs once approved. */
  readonly args: unknown;
  /** sha256 hex of the canonical JSON of { tool, target, args }. */
  readonly digest: string;
  /** sha256 hex of the policy files the decision was made under. */
  readonly policyVersion: string;
  readonly rule: string;
  /** The rule's reason for asking (the decision's reason). */
  readonly ruleReason: string;
  /** The agent's stated purpose (the tool's optional `reason`). */
  readonly purpose?: string;
  /** W3C traceparent of the request, when one came. */
  readonly trace?: string;
  readonly approvers: Approvers;
  readonly quorum: number;
  /** The rule's grant window in ms, opened when this approval is approved. */
  readonly grantMs?: number;
  answers: ApprovalAnswer[];
  /** Set when status becomes consumed: the call that ran it. */
  consumedBy?: string;
  consumedAt?: number;
  /**
   * The result the consuming call returned (masked, secrets scrubbed: exactly what the agent
   * saw), so a repeated await_approval answers it again instead of running the call twice.
   */
  result?: unknown;
}

export interface GrantRecord {
  /** `grt_` + 22 url-safe random characters. */
  readonly id: string;
  readonly sub: string;
  readonly tool: string;
  readonly target: string | null;
  readonly operation: string;
  readonly rule: string;
  readonly policyVersion: string;
  /** The approval that opened it. */
  readonly approvalId: string;
  readonly createdAt: number;
  readonly expiresAt: number;
  /** Who may revoke it besides its holder: the approvers of the approval that opened it. */
  readonly approvers: Approvers;
  revokedAt?: number;
  revokedBy?: string;
}

/**
 * What a state backend provides. Every method is safe against other processes (and, for the
 * PostgreSQL backend, other machines) using the same state at the same time.
 *
 * `update` is the one write primitive for an existing record: it reads the current record
 * under the backend's lock, passes a copy to `change`, and writes what `change` returns;
 * `change` returning `undefined` writes nothing. The returned value is the record as stored
 * after the call (or undefined when there is no such record). `change` must be synchronous
 * and free of side effects: a backend may call it more than once.
 */
export interface StateStore {
  readonly kind: 'file' | 'postgres';
  /**
   * Stores a new approval, unless an open one (pending or approved, not expired) satisfies
   * `joinable`: then that one is returned and nothing is written. The check and the insert are
   * one step against every process sharing the state, so identical calls sent at once share
   * one approval.
   */
  createApproval(
    rec: ApprovalRecord,
    joinable?: (open: ApprovalRecord) => boolean,
  ): Promise<{ record: ApprovalRecord; created: boolean }>;
  getApproval(id: string): Promise<ApprovalRecord | undefined>;
  listApprovals(): Promise<ApprovalRecord[]>;
  updateApproval(
    id: string,
    change: (rec: ApprovalRecord) => ApprovalRecord | undefined,
  ): Promise<{ record: ApprovalRecord | undefined; changed: boolean }>;
  createGrant(rec: GrantRecord): Promise<void>;
  listGrants(): Promise<GrantRecord[]>;
  updateGrant(
    id: string,
    change: (rec: GrantRecord) => GrantRecord | undefined,
  ): Promise<{ record: GrantRecord | undefined; changed: boolean }>;
  /**
   * Calls `listener(id)` when an approval may have changed (another process included: the
   * file backend polls, PostgreSQL uses LISTEN/NOTIFY). Returns the unsubscribe function.
   * Spurious calls are allowed; a missed change is not (waiters also re-read on a timer).
   */
  watch(listener: (approvalId: string) => void): () => void;
  /** Drops records that ended more than `retainMs` ago. */
  prune(now: number, retainMs: number): Promise<void>;
  close(): Promise<void>;
}
