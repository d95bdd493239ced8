// Compiles contracts/*.sol with solcjs (standard JSON: Hardhat's own build would
// download a compiler, and the tests run offline) and writes each contract's ABI and
// creation bytecode as {"Name": {"abi": [...], "bytecode": "0x..."}} to the file named
// by the first argument, or to stdout. Warnings go to stderr; errors exit 1.
//
//   node compile.mjs [out.json]

import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import solc from "solc";

const contractsDir = join(dirname(fileURLToPath(import.meta.url)), "contracts");
const sources = {};
for (const name of readdirSync(contractsDir).filter((n) => n.endsWith(".sol")).sort()) {
  sources[name] = { content: readFileSync(join(contractsDir, name), "utf8") };
}

const input = {
  language: "Solidity",
  sources,
  settings: {
    evmVersion: "cancun",
    optimizer: { enabled: true, runs: 200 },
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
  },
};

const output = JSON.parse(solc.compile(JSON.stringify(input)));
let failed = false;
for (const message of output.errors ?? []) {
  process.stderr.write(message.formattedMessage ?? `${message.message}\n`);
  failed ||= message.severity === "error";
}
if (failed) {
  process.exit(1);
}

const compiled = {};
for (const [file, contracts] of Object.entries(output.contracts ?? {})) {
  for (const [name, contract] of Object.entries(contracts)) {
    if (name in compiled) {
      process.stderr.write(`contract ${name} is defined twice (again in ${file})\n`);
      process.exit(1);
    }
    compiled[name] = { abi: contract.abi, bytecode: `0x${contract.evm.bytecode.object}` };
  }
}

const json = JSON.stringify(compiled);
if (process.argv[2]) {
  writeFileSync(process.argv[2], json);
} else {
  process.stdout.write(json);
}
