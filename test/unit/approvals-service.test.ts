import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import {
  ApprovalRefused,
  ApprovalService,
  MAX_PENDING_PER_REQUESTER,
  type CallToApprove,
} from '../../server/approvals/service.js';
import { openFileStore } from '../../server/approvals/store-file.js';
import type { ApprovalRecord } from '../../server/approvals/types.js';
import type { AuditRecord } from '../../recordings/audit.js';

/**
 * The approval service on the file store: binding, answers, quorum, grants on fake timers,
 * and the store's promise that several processes sharing the file lose no change and use an
 * approval once.
 */

const call = (over: Partial<CallToApprove> = {}): CallToApprove => ({
  requester: { sub: 'alice', groups: ['sre'] },
  session: 's1',
  callId: 'c1',
  tool: 'postgres_query',
  target: 'app-db',
  operation: 'write',
  input: { sql: 'UPDATE t SET a = 1 WHERE id = 1' },
  args: { target: 'app-db', sql: 'UPDATE t SET a = 1 WHERE id = 1' },
  rule: 'sre-writes',
  ruleReason: 'statement is write (UpdateStmt)',
  approval: {
    approvers: { groups: ['dba'] },
    timeout: 30 * 60_000,
    hold: 45_000,
    grant: 15 * 60_000,
    quorum: 1,
    requireReason: false,
  },
  ...over,
});

const dba = (sub: string) => ({ sub, groups: ['dba'] });

describe('ApprovalService on the file store', () => {
  let dir: string;
  let audit: AuditRecord[];
  let svc: ApprovalService;

  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'gatehouse-approvals-unit-'));
    audit = [];
    svc = new ApprovalService(await openFileStore(path.join(dir, 'state.json')), {
      policyVersion: 'v1',
      audit: async (r) => void audit.push(r),
    });
  });
  afterEach(async () => {
    vi.useRealTimers();
    await svc.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('binds to the exact call: the same call joins, one changed character is a new approval', async () => {
    const a = await svc.request(call());
    const again = await svc.request(call({ callId: 'c2' }));
    expect(again).toMatchObject({ joined: true, record: { id: a.record.id } });
    const sql = 'UPDATE t SET a = 2 WHERE id = 1';
    const other = await svc.request(call({ args: { target: 'app-db', sql } }));
    expect(other.joined).toBe(false);
    expect(other.record.digest).not.toBe(a.record.digest);
    // Another identity with the same call never joins alice's approval.
    const bob = await svc.request(call({ requester: { sub: 'bob', groups: ['sre'] } }));
    expect(bob.joined).toBe(false);
  });

  it('the requester cannot answer, whatever its groups; an approver once; deny wins; used once', async () => {
    const { record } = await svc.request(
      call({ requester: { sub: 'alice', groups: ['sre', 'dba'] } }),
    );
    await expect(
      svc.answer(record.id, { sub: 'alice', groups: ['dba'] }, 'approve', undefined, 'api'),
    ).rejects.toMatchObject({ status: 403 });
    await expect(
      svc.answer(record.id, { sub: 'ALICE', groups: ['dba'] }, 'approve', undefined, 'api'),
    ).rejects.toMatchObject({ status: 403 });
    await expect(
      svc.answer(record.id, { sub: 'eve', groups: ['sre'] }, 'approve', undefined, 'api'),
    ).rejects.toBeInstanceOf(ApprovalRefused);
    const ok = await svc.answer(record.id, dba('dora'), 'approve', 'fine', 'api');
    expect(ok.status).toBe('approved');
    await expect(svc.answer(record.id, dba('dan'), 'deny', undefined, 'api')).rejects.toMatchObject(
      { status: 409 },
    );
    expect(await svc.consume(record.id, 'c1')).toBe(true);
    expect(await svc.consume(record.id, 'c2')).toBe(false);
    expect(audit.map((r) => r.approval?.event)).toEqual(['requested', 'approved', 'consumed']);
  });

  it('quorum: N distinct approvers; a look-alike of an approver is the same approver', async () => {
    const { record } = await svc.request(call({ approval: { ...call().approval, quorum: 2 } }));
    expect((await svc.answer(record.id, dba('dora'), 'approve', undefined, 'api')).status).toBe(
      'pending',
    );
    await expect(
      svc.answer(record.id, dba('dоra'), 'approve', undefined, 'api'),
    ).rejects.toMatchObject({ status: 409 });
    expect((await svc.answer(record.id, dba('dan'), 'approve', undefined, 'api')).status).toBe(
      'approved',
    );
  });

  it('no answer before the timeout is expired (denied), and a late answer is refused', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    const { record } = await svc.request(
      call({ approval: { ...call().approval, timeout: 60_000 } }),
    );
    vi.setSystemTime(Date.now() + 60_001);
    expect((await svc.get(record.id))?.status).toBe('expired');
    await expect(
      svc.answer(record.id, dba('dora'), 'approve', undefined, 'api'),
    ).rejects.toMatchObject({ status: 409 });
    expect(audit.at(-1)?.approval).toMatchObject({ event: 'expired', answer: 'timeout' });
  });

  it('a grant opens on approval, serves the same identity/target/operation/rule, expires on time, and is revocable', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    const { record } = await svc.request(call());
    await svc.answer(record.id, dba('dora'), 'approve', undefined, 'api');
    const other = call({
      callId: 'c9',
      args: { target: 'app-db', sql: 'UPDATE t SET a = 9 WHERE id = 9' },
    });
    const grant = await svc.findGrant(other);
    expect(grant).toMatchObject({
      sub: 'alice',
      target: 'app-db',
      operation: 'write',
      rule: 'sre-writes',
    });
    // Not for another identity, target, operation, or policy version.
    expect(
      await svc.findGrant(call({ requester: { sub: 'bob', groups: ['sre'] } })),
    ).toBeUndefined();
    expect(await svc.findGrant(call({ target: 'other-db' }))).toBeUndefined();
    expect(await svc.findGrant(call({ operation: 'ddl' }))).toBeUndefined();
    // 15 minutes later it is gone.
    vi.setSystemTime(Date.now() + 15 * 60_000 - 1);
    expect(await svc.findGrant(other)).toBeDefined();
    vi.setSystemTime(Date.now() + 2);
    expect(await svc.findGrant(other)).toBeUndefined();
    expect(await svc.grantsVisibleTo({ sub: 'alice', groups: [] })).toEqual([]);
  });

  it('revoke: by the holder or an approver, not by others; audited; then no longer serves', async () => {
    const { record } = await svc.request(call());
    await svc.answer(record.id, dba('dora'), 'approve', undefined, 'api');
    const [grant] = await svc.grantsVisibleTo(dba('dan'));
    expect(grant).toBeDefined();
    await expect(svc.revokeGrant(grant!.id, { sub: 'eve', groups: ['sre'] })).rejects.toMatchObject(
      { status: 403 },
    );
    const revoked = await svc.revokeGrant(grant!.id, dba('dan'));
    expect(revoked.revokedBy).toBe('dan');
    expect(await svc.findGrant(call())).toBeUndefined();
    await expect(svc.revokeGrant(grant!.id, dba('dan'))).rejects.toMatchObject({ status: 409 });
    expect(audit.at(-1)?.approval).toMatchObject({ event: 'grant-revoked', approver: 'dan' });
  });

  it('a restart keeps a pending approval pending (never approved) and a grant open until it expires', async () => {
    const { record } = await svc.request(call());
    await svc.close();
    svc = new ApprovalService(await openFileStore(path.join(dir, 'state.json')), {
      policyVersion: 'v1',
      audit: async (r) => void audit.push(r),
    });
    expect((await svc.get(record.id))?.status).toBe('pending');
    expect(await svc.consume(record.id, 'c1')).toBe(false);
    await svc.answer(record.id, dba('dora'), 'approve', undefined, 'api');
    await svc.close();
    svc = new ApprovalService(await openFileStore(path.join(dir, 'state.json')), {
      policyVersion: 'v1',
      audit: async (r) => void audit.push(r),
    });
    expect(await svc.findGrant(call())).toBeDefined();
    expect(await svc.consume(record.id, 'c1')).toBe(true);
  });

  it('an approval given but not used before its timeout expires: it never runs late', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    const { record } = await svc.request(
      call({ approval: { ...call().approval, timeout: 60_000 } }),
    );
    await svc.answer(record.id, dba('dora'), 'approve', undefined, 'api');
    vi.setSystemTime(Date.now() + 60_001);
    expect(await svc.consume(record.id, 'c1')).toBe(false);
    expect((await svc.get(record.id))?.status).toBe('expired');
  });

  it('identical calls sent at once share one approval; an identity has at most 16 waiting', async () => {
    const many = await Promise.all([1, 2, 3, 4].map((n) => svc.request(call({ callId: `c${n}` }))));
    expect(new Set(many.map((m) => m.record.id)).size).toBe(1);
    expect(many.filter((m) => !m.joined)).toHaveLength(1);
    for (let n = 1; n < MAX_PENDING_PER_REQUESTER; n++) {
      await svc.request(
        call({ args: { target: 'app-db', sql: `UPDATE t SET a = ${n} WHERE id = 2` } }),
      );
    }
    await expect(
      svc.request(call({ args: { target: 'app-db', sql: 'UPDATE t SET a = 99 WHERE id = 3' } })),
    ).rejects.toMatchObject({ code: 'LIMIT_EXCEEDED' });
    // The same call as one already waiting still joins it.
    expect((await svc.request(call())).joined).toBe(true);
    // Others are not held back by alice's queue.
    expect((await svc.request(call({ requester: { sub: 'bob', groups: ['sre'] } }))).joined).toBe(
      false,
    );
  });

  it('policy version is part of the binding: after a policy change the same call does not join', async () => {
    const { record } = await svc.request(call());
    const store = await openFileStore(path.join(dir, 'state.json'));
    const v2 = new ApprovalService(store, { policyVersion: 'v2', audit: async () => {} });
    const again = await v2.request(call());
    expect(again.joined).toBe(false);
    expect(again.record.id).not.toBe(record.id);
    await v2.close();
  });
});

describe('the file store across processes', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'gatehouse-state-procs-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('four processes appending answers at once lose none; one of them consumes', async () => {
    const file = path.join(dir, 'state.json');
    const store = await openFileStore(file);
    const rec: ApprovalRecord = {
      id: 'apr_shared',
      status: 'approved',
      createdAt: Date.now(),
      expiresAt: Date.now() + 60_000,
      requester: { sub: 'a', groups: [] },
      session: 's',
      callId: 'c',
      tool: 't',
      target: null,
      operation: 'write',
      input: null,
      args: null,
      digest: 'd',
      policyVersion: 'v',
      rule: 'r',
      ruleReason: 'x',
      approvers: { groups: ['g'] },
      quorum: 1,
      answers: [],
    };
    await store.createApproval(rec);
    await store.close();
    const worker = path.join(dir, 'worker.mts');
    const storeModule = fileURLToPath(
      new URL('../../server/approvals/store-file.ts', import.meta.url),
    );
    await writeFile(
      worker,
      `import { openFileStore } from ${JSON.stringify(storeModule)};
const s = await openFileStore(${JSON.stringify(file)});
const me = process.argv[2];
let consumed = false;
for (let i = 0; i < 25; i++) {
  await s.updateApproval('apr_shared', (r) => { r.answers.push({ by: me + '-' + i, groups: [], answer: 'approve', at: 0, via: 'api' }); return r; });
  const r = await s.updateApproval('apr_shared', (r) => r.status === 'approved' ? { ...r, status: 'consumed', consumedBy: me } : undefined);
  if (r.changed) consumed = true;
}
await s.close();
process.stdout.write(consumed ? 'consumed' : 'not');
`,
    );
    const outs = await Promise.all(
      ['p1', 'p2', 'p3', 'p4'].map(
        (id) =>
          new Promise<string>((resolve, reject) => {
            const child = spawn(process.execPath, ['--import', 'tsx', worker, id], {
              stdio: ['ignore', 'pipe', 'inherit'],
            });
            let out = '';
            child.stdout.on('data', (d: Buffer) => (out += d.toString()));
            child.once('error', reject);
            child.once('close', (code) =>
              code === 0 ? resolve(out) : reject(new Error(`exit ${code}`)),
            );
          }),
      ),
    );
    expect(outs.filter((o) => o === 'consumed')).toHaveLength(1);
    const data = JSON.parse(await readFile(file, 'utf8')) as {
      approvals: Record<string, ApprovalRecord>;
    };
    expect(data.approvals.apr_shared!.answers).toHaveLength(100);
    expect(data.approvals.apr_shared!.status).toBe('consumed');
  }, 60_000);
});
