"""Chain access: contract ABIs and bytecode, the deployments file, and a checked RPC connection."""
