// Only Hardhat's node is used (tools/evmnode.py); its defaults (chain 31337, the
// public test accounts) suffice. What it writes goes under the repository's .run/evm,
// not beside the sources.
export default {
  paths: {
    artifacts: "../../.run/evm/hardhat/artifacts",
    cache: "../../.run/evm/hardhat/cache",
  },
};
