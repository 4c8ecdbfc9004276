import { StdioServerTransport } from '@modelcontextprotocol/sdk/server/stdio.js';
import { GovernanceError } from './kernel/errors.js';
import { log } from './kernel/log.js';
import { createMcpServer } from './mcp.js';
import { createRuntime, type Runtime } from './runtime.js';
import { newSession } from './session.js';

/** `gatehouse serve` over stdio: one process, one MCP session, one identity. */
export async function serveStdio(
  configFile: string,
  token: () => string | undefined,
): Promise<number> {
  const rt = await createRuntime(configFile);
  return serveStdioWith(rt, token);
}

export async function serveStdioWith(
  rt: Runtime,
  token: () => string | undefined,
): Promise<number> {
  // Verified at start so a bad token fails loudly now, and again on every call (expiry).
  const presented = token();
  if (!presented) {
    await rt.close();
    throw new GovernanceError(
      'UNAUTHENTICATED',
      'no token: set GATEHOUSE_TOKEN or pass --token-file (there is no anonymous mode)',
    );
  }
  let identity;
  try {
    identity = await rt.verifier.verify(presented);
  } catch (err) {
    await rt.close();
    throw err;
  }
  const session = newSession('stdio', token);
  session.identity = identity;
  const server = createMcpServer(rt, session);
  const transport = new StdioServerTransport();
  const closed = new Promise<void>((resolve) => {
    transport.onclose = resolve;
    process.stdin.once('end', resolve);
  });
  await server.connect(transport);
  log.info(
    { session: session.id, sub: identity.sub, groups: identity.groups },
    'serving MCP over stdio',
  );
  const stop = new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  await Promise.race([closed, stop]);
  await server.close().catch(() => undefined);
  await session.recorder?.close().catch(() => undefined);
  await rt.close();
  log.info({ session: session.id }, 'session ended');
  return 0;
}
