-- Builds the kernel replay program of oprover-serve's Lean checker (OproverReplay.lean; docs/lean.md).
-- Dockerfile.lean writes `lean-toolchain` for the image's Lean version and runs `lake build` here; it needs only
-- Lean itself (the program imports Mathlib's modules at run time, under `lake env` in the Mathlib project).
import Lake
open Lake DSL

package «oprover-replay»

@[default_target]
lean_exe «oprover-replay» where
  root := `OproverReplay
  supportInterpreter := true
