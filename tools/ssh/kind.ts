import { z } from 'zod';
import { SecretRef } from '../../server/kernel/secrets.js';
import type { TargetKind } from '../kind.js';

export const SshTarget = z.strictObject({
  kind: z.literal('ssh'),
  description: z.string().optional(),
  host: z.string().min(1),
  port: z.number().int().min(1).max(65535).default(22),
  user: z.string().min(1),
  privateKey: SecretRef,
  hostKey: z
    .string()
    .regex(/^(ssh-|ecdsa-)\S+ \S+/, 'hostKey is a public key line such as "ssh-ed25519 AAAA..."'),
});
export type SshTargetConfig = z.output<typeof SshTarget> & { name: string };

/**
 * SSH targets. The config is accepted now so a gatehouse.yaml can name them; `ssh_exec`
 * arrives in a later release and plugs its tool in here.
 */
export const sshKind: TargetKind<SshTargetConfig> = {
  kind: 'ssh',
  configSchema: SshTarget,
  laterTools: ['ssh_exec'],
  summary: (t) => `ssh ${t.user}@${t.host}:${t.port}`,
  secretRefs: (t) => [{ key: 'privateKey', ref: t.privateKey }],
  open: () => notServed('ssh'),
};

/** A kind whose tools are not in this release: no tools, nothing to check or close. */
export function notServed(kind: string) {
  return {
    tools: [],
    check: async () => [
      {
        level: 'warning' as const,
        text: `targets of kind ${kind} are not served by this release, so not checked`,
      },
    ],
    close: async () => {},
  };
}
