/**
 * Stand-alone entry for the agent, for hosts that run it from source without the full CLI:
 *   node --import tsx agent/main.ts --gateway URL --token TOKEN
 * Same code and flags as `egressgate agent`.
 */
import { run } from '../gateway/commands/agent.ts';

process.exitCode = await run(process.argv.slice(2));
