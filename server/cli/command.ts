import { existsSync } from 'node:fs';
import { parseArgs, type ParseArgsConfig } from 'node:util';

/**
 * What a `gatehouse` command is: a name, a one-line summary, its positionals, its options and
 * a run function. The option objects are the very ones given to `node:util` `parseArgs`, with
 * a help text and a value name beside what parseArgs reads, and the help is generated from
 * them: what `--help` says is what the parser accepts.
 */

type ParseOption = NonNullable<ParseArgsConfig['options']>[string];

export interface Option extends ParseOption {
  /** One line for the help (the default, if any, is added to it). */
  readonly help: string;
  /** How the value is shown in help: `--sub S`. String options only. */
  readonly value?: string;
  /** Absent is a usage error (parseArgs has no such notion). */
  readonly required?: true;
}

export type Options = Readonly<Record<string, Option>>;

export interface Positional {
  /** As shown in help: `ID`, `NAME`. */
  readonly name: string;
  readonly help: string;
  readonly required?: true;
  /** Takes any number of values (the last positional only). */
  readonly variadic?: true;
}

type OptionValue<O extends Option> = O['type'] extends 'boolean' ? boolean : string;

/** What a command's run gets: each option typed from its definition. */
export type Values<O extends Options> = {
  -readonly [K in keyof O]:
    | (O[K]['multiple'] extends true ? OptionValue<O[K]>[] : OptionValue<O[K]>)
    | (O[K] extends { default: unknown } | { required: true } ? never : undefined);
};

/** Where a command writes: stdout for results, stderr for everything else. */
export interface Io {
  out: NodeJS.WritableStream;
  err: NodeJS.WritableStream;
}

export interface Command<O extends Options = Options> {
  readonly name: string;
  readonly summary: string;
  /** Paragraphs after the summary in the command's own help. */
  readonly details?: readonly string[];
  readonly positionals?: readonly Positional[];
  readonly options: O;
  /** The exit codes, when they say more than the usual 0 / 1 / 2. */
  readonly exits?: string;
  /** false: unknown options and extra arguments are not usage errors (a stub command). */
  readonly strict?: false;
  run(args: { values: Values<O>; positionals: string[] }, io: Io): Promise<number>;
}

/** A command with subcommands: `gatehouse policy check`. */
export interface Group {
  readonly name: string;
  readonly summary: string;
  readonly commands: readonly Command[];
}

export type Entry = Command | Group;

/**
 * Declares a command with its option types inferred from the option objects (`run` is a
 * method, so a command with typed values still fits the untyped `Command` the dispatcher holds).
 */
export function command<const O extends Options>(c: Command<O>): Command {
  return c;
}

/**
 * A usage problem: printed as one line, `gatehouse: <message>`, then where to read more
 * (`see 'gatehouse <path> --help'`); exit 2. `path` is filled in by the dispatcher.
 */
export class UsageError extends Error {
  constructor(
    message: string,
    public path: readonly string[] = [],
  ) {
    super(message);
    this.name = 'UsageError';
  }
}

export const EXIT_CODES =
  '0 ok, 1 a check failed or the operation was refused, 2 usage or config error';

/** The `--config` option, the same for every command that reads a config. */
export const configOption = {
  type: 'string',
  default: './gatehouse.yaml',
  value: 'F',
  help: 'the config file',
} as const satisfies Option;

/**
 * The config file, or a usage error when it is not there: one message for every command, so
 * a wrong directory reads the same whichever command met it first.
 */
export function requireConfig(file: string, orElse?: string): string {
  if (existsSync(file)) return file;
  throw new UsageError(`no config at ${file}${orElse ? ` (or pass ${orElse})` : ''}`);
}

/** "1 rule", "2 rules". */
export function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}

const HELP = { type: 'boolean', short: 'h', help: 'this help' } as const satisfies Option;
const VERSION = {
  type: 'boolean',
  short: 'V',
  help: 'print the version',
} as const satisfies Option;

// ---------------------------------------------------------------------------------------------
// Dispatch

export interface Program {
  readonly name: string;
  readonly version: () => string;
  readonly entries: readonly Entry[];
  /** Lines at the end of the top-level help. */
  readonly notes?: readonly string[];
}

const isGroup = (e: Entry): e is Group => 'commands' in e;
const wantsHelp = (a: string | undefined) => a === '--help' || a === '-h';

/** Runs argv against the program: help, version, or one command's run. Returns the exit code. */
export async function dispatch(program: Program, argv: readonly string[], io: Io): Promise<number> {
  const [first, ...rest] = argv;
  if (first === undefined) {
    // Nothing asked: what there is, on stderr, and a usage exit.
    io.err.write(programHelp(program));
    return 2;
  }
  if (wantsHelp(first) || first === 'help') {
    const path = first === 'help' ? rest : [];
    io.out.write(helpFor(program, path));
    return 0;
  }
  if (first === '--version' || first === '-V') {
    io.out.write(`${program.name} ${program.version()}\n`);
    return 0;
  }
  if (first.startsWith('-')) throw new UsageError(`unknown option ${quote(first)}`);
  const entry = program.entries.find((e) => e.name === first);
  if (!entry) throw new UsageError(`unknown command ${quote(first)}`);
  if (!isGroup(entry)) return runCommand(program, [entry.name], entry, rest, io);

  const [sub, ...args] = rest;
  if (sub === undefined || sub.startsWith('-')) {
    if (wantsHelp(sub)) {
      io.out.write(groupHelp(program, entry));
      return 0;
    }
    throw new UsageError(
      `${entry.name} needs a command: ${entry.commands.map((c) => c.name).join(', ')}`,
      [entry.name],
    );
  }
  const cmd = entry.commands.find((c) => c.name === sub);
  if (!cmd) throw new UsageError(`unknown command ${quote(`${entry.name} ${sub}`)}`, [entry.name]);
  return runCommand(program, [entry.name, cmd.name], cmd, args, io);
}

async function runCommand(
  program: Program,
  path: readonly string[],
  cmd: Command,
  args: readonly string[],
  io: Io,
): Promise<number> {
  const options = { ...cmd.options, help: HELP };
  // `--help` anywhere among the options wins over everything else, even an unknown option
  // beside it; not as a value, though (in `--input -h`, `-h` belongs to --input).
  const loose = parseArgs({
    args: [...args],
    options,
    strict: false,
    allowPositionals: true,
    tokens: true,
  });
  if (loose.tokens.some((t) => t.kind === 'option' && t.name === 'help')) {
    io.out.write(commandHelp(program, path, cmd));
    return 0;
  }
  try {
    const parsed = parseCommandArgs(path, cmd, args);
    return await cmd.run(parsed, io);
  } catch (err) {
    if (err instanceof UsageError && err.path.length === 0) err.path = path;
    throw err;
  }
}

function parseCommandArgs(path: readonly string[], cmd: Command, args: readonly string[]) {
  const strict = cmd.strict !== false;
  let parsed;
  try {
    parsed = parseArgs({
      args: glueDashValues(cmd.options, args),
      options: { ...cmd.options, help: HELP },
      strict,
      allowPositionals: true,
    });
  } catch (err) {
    throw new UsageError(parseProblem(err as Error & { code?: string }));
  }
  const { help: _help, ...values } = parsed.values as Record<string, unknown>;
  const missing = Object.entries(cmd.options)
    .filter(([name, o]) => o.required && values[name] === undefined)
    .map(([name]) => `--${name}`);
  const declared = cmd.positionals ?? [];
  for (const p of declared.slice(parsed.positionals.length)) if (p.required) missing.push(p.name);
  if (missing.length > 0) throw new UsageError(`${path.join(' ')} needs ${listed(missing)}`);
  if (strict && !declared.at(-1)?.variadic && parsed.positionals.length > declared.length) {
    throw new UsageError(`unexpected argument ${quote(parsed.positionals[declared.length]!)}`);
  }
  return { values: values as Values<Options>, positionals: parsed.positionals };
}

/**
 * `--speed -1`: parseArgs calls a dash-led value ambiguous (it could be an option). A negative
 * number is never an option name here, so it stays with its flag (`--speed=-1`), and the
 * command can say what is wrong with the value itself.
 */
function glueDashValues(options: Options, args: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const next = args[i + 1];
    const name = a.startsWith('--') ? a.slice(2) : undefined;
    if (name && options[name]?.type === 'string' && next !== undefined && /^-\d/.test(next)) {
      out.push(`${a}=${next}`);
      i++;
    } else out.push(a);
  }
  return out;
}

/** parseArgs' error as one short line. */
function parseProblem(err: Error & { code?: string }): string {
  const named = /'([^']+)'/.exec(err.message)?.[1] ?? '';
  const option = named.replace(/ <value>$/, '');
  switch (err.code) {
    case 'ERR_PARSE_ARGS_UNKNOWN_OPTION':
      return `unknown option ${quote(option)}`;
    case 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL':
      return `unexpected argument ${quote(option)}`;
    case 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE':
      if (/does not take an argument/.test(err.message)) return `option ${option} takes no value`;
      if (/ambiguous/.test(err.message))
        return `option ${option} needs a value (one starting with '-' goes as ${option}=-...)`;
      return `option ${option} needs a value`;
    default:
      return err.message.split('\n')[0] ?? String(err);
  }
}

const quote = (s: string) => `'${s}'`;

function listed(items: readonly string[]): string {
  if (items.length <= 1) return items.join('');
  return `${items.slice(0, -1).join(', ')} and ${items.at(-1)}`;
}

// ---------------------------------------------------------------------------------------------
// Help, generated from the same definitions the parser uses

const WIDTH = 100;

/** `--sub S`, `[--group G]...`, `[-f]`: how one option is written in a usage line. */
function optionSynopsis(name: string, o: Option): string {
  const flag = o.type === 'boolean' && o.short ? `-${o.short}` : `--${name}`;
  const text = o.type === 'string' ? `${flag} ${o.value ?? 'VALUE'}` : flag;
  if (o.required) return text;
  return `[${text}]${o.multiple ? '...' : ''}`;
}

function positionalSynopsis(p: Positional): string {
  const text = `${p.name}${p.variadic ? '...' : ''}`;
  return p.required ? text : `[${text}]`;
}

/** The usage line of a command, without `gatehouse`: `policy explain --sub S ...`. */
export function synopsis(path: readonly string[], cmd: Command): string {
  const options = Object.entries(cmd.options).map(([n, o]) => optionSynopsis(n, o));
  const positionals = (cmd.positionals ?? []).map(positionalSynopsis);
  return [...path, ...options, ...positionals].join(' ');
}

function optionLabel(name: string, o: Option): string {
  const long = o.type === 'string' ? `--${name} ${o.value ?? 'VALUE'}` : `--${name}`;
  return o.short ? `-${o.short}, ${long}` : `    ${long}`;
}

function optionHelp(o: Option): string {
  const notes: string[] = [];
  if (o.required) notes.push('required');
  if (o.multiple) notes.push('repeatable');
  const shown = Array.isArray(o.default) ? o.default.length > 0 : o.default !== undefined;
  if (shown && o.type === 'string') notes.push(`default ${String(o.default)}`);
  return notes.length > 0 ? `${o.help} (${notes.join('; ')})` : o.help;
}

/** Rows of `label  text`, the text wrapped under itself. */
function table(rows: ReadonlyArray<readonly [string, string]>, indent = 2): string {
  const labelWidth = Math.min(24, Math.max(...rows.map(([l]) => l.length)));
  const lines: string[] = [];
  for (const [label, text] of rows) {
    const pad = ' '.repeat(indent + labelWidth + 2);
    const wrapped = wrap(text, WIDTH - pad.length);
    if (label.length > labelWidth) {
      lines.push(' '.repeat(indent) + label);
      wrapped.forEach((l) => lines.push(pad + l));
    } else {
      lines.push(' '.repeat(indent) + label.padEnd(labelWidth + 2) + (wrapped[0] ?? ''));
      wrapped.slice(1).forEach((l) => lines.push(pad + l));
    }
  }
  return lines.join('\n') + '\n';
}

function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = '';
  for (const word of text.split(/\s+/).filter(Boolean)) {
    if (line && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else line = line ? `${line} ${word}` : word;
  }
  if (line) lines.push(line);
  return lines;
}

const paragraph = (text: string) => wrap(text, WIDTH).join('\n') + '\n';

function everyCommand(program: Program): Array<[string[], Command]> {
  return program.entries.flatMap((e): Array<[string[], Command]> =>
    isGroup(e) ? e.commands.map((c) => [[e.name, c.name], c]) : [[[e.name], e]],
  );
}

export function programHelp(program: Program): string {
  const commands = everyCommand(program).map(
    ([path, cmd]) => `  ${program.name} ${synopsis(path, cmd)}\n${indented(cmd.summary, 6)}`,
  );
  return [
    `usage: ${program.name} <command> [options]\n`,
    `commands:\n${commands.join('')}`,
    `options:\n${table([
      [optionLabel('help', HELP), `this help; '${program.name} <command> --help' for one command`],
      [optionLabel('version', VERSION), VERSION.help],
    ])}`,
    `exit codes: ${EXIT_CODES}\n`,
    ...(program.notes ?? []).map(paragraph),
  ].join('\n');
}

function indented(text: string, by: number): string {
  return wrap(text, WIDTH - by)
    .map((l) => ' '.repeat(by) + l + '\n')
    .join('');
}

function groupHelp(program: Program, group: Group): string {
  return [
    `usage: ${program.name} ${group.name} <command> [options]\n`,
    paragraph(group.summary),
    `commands:\n${group.commands
      .map(
        (c) => `  ${program.name} ${synopsis([group.name, c.name], c)}\n${indented(c.summary, 6)}`,
      )
      .join('')}`,
    `'${program.name} ${group.name} <command> --help' for one command's options\n`,
  ].join('\n');
}

export function commandHelp(program: Program, path: readonly string[], cmd: Command): string {
  const positionals = (cmd.positionals ?? []).map((p): [string, string] => [
    `    ${p.name}${p.variadic ? '...' : ''}`,
    p.help,
  ]);
  const options = Object.entries(cmd.options).map(([n, o]): [string, string] => [
    optionLabel(n, o),
    optionHelp(o),
  ]);
  const rows = [...positionals, ...options, [optionLabel('help', HELP), HELP.help] as const];
  return [
    `usage: ${program.name} ${synopsis(path, cmd)}\n`,
    paragraph(cmd.summary) + (cmd.details ?? []).map((d) => '\n' + paragraph(d)).join(''),
    `${positionals.length > 0 ? 'arguments and options' : 'options'}:\n${table(rows)}`,
    `exit codes: ${cmd.exits ?? EXIT_CODES}\n`,
  ].join('\n');
}

/** Help for `gatehouse help [command...]`. */
function helpFor(program: Program, path: readonly string[]): string {
  const [top, sub] = path;
  if (top === undefined) return programHelp(program);
  const entry = program.entries.find((e) => e.name === top);
  if (!entry) throw new UsageError(`unknown command ${quote(top)}`);
  if (!isGroup(entry)) return commandHelp(program, [entry.name], entry);
  if (sub === undefined) return groupHelp(program, entry);
  const cmd = entry.commands.find((c) => c.name === sub);
  if (!cmd) throw new UsageError(`unknown command ${quote(`${top} ${sub}`)}`, [top]);
  return commandHelp(program, [top, sub], cmd);
}
