// @ts-check
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'coverage/**', '.gatehouse/**', '**/*.tmp.ts'] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: {
        projectService: { allowDefaultProject: ['eslint.config.js', '.ci/*.mjs'] },
        tsconfigRootDir: import.meta.dirname,
      },
    },
    rules: {
      '@typescript-eslint/no-unused-vars': [
        'error',
        { argsIgnorePattern: '^_', varsIgnorePattern: '^_' },
      ],
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/require-await': 'off',
    },
  },
  {
    // stdout is the MCP channel in stdio mode: server code logs to stderr only.
    files: ['server/**/*.ts', 'tools/**/*.ts', 'policies/**/*.ts', 'recordings/**/*.ts'],
    rules: { 'no-console': 'error' },
  },
  {
    // The four rooms (README, Architecture): tools/, policies/ and recordings/ take from server/
    // only its kernel, so a tool or the policy engine never reaches into the runtime, the
    // pipeline or the CLI; the runtime wires them together.
    files: ['tools/**/*.ts', 'policies/**/*.ts', 'recordings/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            {
              regex: '(^|/)server/(?!kernel/)',
              message: 'tools/, policies/ and recordings/ import only server/kernel/ from server/',
            },
          ],
        },
      ],
    },
  },
  {
    // The kernel is the bottom floor: it imports nothing else of the project.
    files: ['server/kernel/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            {
              regex: '^\\.\\./',
              message: 'server/kernel/ imports nothing of the project outside itself',
            },
          ],
        },
      ],
    },
  },
  { files: ['eslint.config.js', '.ci/*.mjs'], ...tseslint.configs.disableTypeChecked },
);
