// Compiles contracts/*.sol with the pinned solc-js and OpenZeppelin Contracts of
// package.json and writes artifacts/NAME.json (ABI, creation bytecode, compiler and
// settings). With --check, compares instead and exits 1 naming what differs.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import solc from "solc";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.dirname(here);
const contracts = path.join(root, "contracts");
const artifacts = path.join(root, "artifacts");
const check = process.argv.includes("--check");

const settings = {
  optimizer: { enabled: true, runs: 200 },
  evmVersion: "prague",
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
};
const sources = {};
for (const f of fs.readdirSync(contracts).filter((f) => f.endsWith(".sol")).sort()) {
  sources[f] = { content: fs.readFileSync(path.join(contracts, f), "utf8") };
}
const findImports = (p) => {
  const file = p.startsWith("@openzeppelin/")
    ? path.join(here, "node_modules", p)
    : path.join(contracts, p);
  try {
    return { contents: fs.readFileSync(file, "utf8") };
  } catch (e) {
    return { error: `${p}: ${e.message}` };
  }
};
const out = JSON.parse(
  solc.compile(JSON.stringify({ language: "Solidity", sources, settings }), { import: findImports }),
);
const errors = (out.errors || []).filter((e) => e.severity === "error");
for (const e of out.errors || []) console.error(e.formattedMessage);
if (errors.length) process.exit(1);

let differs = 0;
fs.mkdirSync(artifacts, { recursive: true });
for (const [file, byName] of Object.entries(out.contracts)) {
  if (!sources[file]) continue;
  for (const [name, c] of Object.entries(byName)) {
    const text =
      JSON.stringify(
        { compiler: solc.version(), settings, abi: c.abi, bytecode: "0x" + c.evm.bytecode.object },
        null,
        1,
      ) + "\n";
    const target = path.join(artifacts, `${name}.json`);
    if (check) {
      const committed = fs.existsSync(target) ? fs.readFileSync(target, "utf8") : "";
      if (committed !== text) {
        console.error(`artifacts/${name}.json differs from what contracts/${file} compiles to`);
        differs += 1;
      }
    } else {
      fs.writeFileSync(target, text);
      console.log(`artifacts/${name}.json: ${c.evm.bytecode.object.length / 2} bytes of creation code`);
    }
  }
}
process.exit(differs ? 1 : 0);
