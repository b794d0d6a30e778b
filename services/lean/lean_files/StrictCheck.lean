/-
Strict mode (audits): replay a compiled proof in a fresh kernel environment and compare its theorem's type with
the reference statement's. Written for oprover-serve; run inside the Lean project (so Mathlib is on LEAN_PATH):

    lake env lean --run StrictCheck.lean COMPILED.lean REFERENCE.lean THEOREM_NAME

COMPILED.lean is `CheckResult.compiled` (header + helpers + imposed statement + body). REFERENCE.lean is the
header followed by the requested statement proved by `sorry`. The last line printed is one JSON object:

    {"ok": true|false, "typeMatches": …, "replayed": N, "axioms": […], "errors": […]}

`ok` needs: both files elaborate without errors (the reference may only warn about its `sorry`), the theorem
exists in both, its type in COMPILED is the very same expression as in REFERENCE (same universe parameters), every
declaration COMPILED added is accepted again by the kernel when replayed on top of the bare imports, and the
theorem's axioms are among propext, Classical.choice, Quot.sound.
-/
import Lean
open Lean Elab

namespace OproverStrict

def standardAxioms : List Name := [``propext, ``Classical.choice, ``Quot.sound]

/-- Elaborate a whole file; return its environment and the text of its error messages. -/
def elabFile (path : System.FilePath) : IO (Environment × Array String) := do
  let input ← IO.FS.readFile path
  let inputCtx := Parser.mkInputContext input path.toString
  let (header, parserState, messages) ← Parser.parseHeader inputCtx
  let (env, messages) ← processHeader header {} messages inputCtx
  let commandState := Command.mkState env messages {}
  let s ← IO.processCommands inputCtx parserState commandState
  let msgs := s.commandState.messages.toList
  let mut errors := #[]
  for m in msgs do
    if m.severity == MessageSeverity.error then
      errors := errors.push (← m.toString)
  return (s.commandState.env, errors)

/-- Constants of `env` that none of its imported modules declared (what the file itself added). -/
def localConstants (env : Environment) : Std.HashMap Name ConstantInfo := Id.run do
  let mut out : Std.HashMap Name ConstantInfo := {}
  for (name, info) in env.constants.map₂.toList do
    out := out.insert name info
  return out

def jsonStrings (xs : List String) : Json := Json.arr (xs.map Json.str).toArray

def report (ok typeMatches : Bool) (replayed : Nat) (axioms : List Name) (errors : List String) :
    IO UInt32 := do
  let j := Json.mkObj [("ok", toJson ok), ("typeMatches", toJson typeMatches), ("replayed", toJson replayed),
    ("axioms", jsonStrings (axioms.map toString)), ("errors", jsonStrings errors)]
  IO.println j.compress
  return if ok then 0 else 1

/-- The axioms `name` depends on, computed on `env` (as `#print axioms` does). -/
def axiomsOf (env : Environment) (name : Name) : IO (List Name) := do
  let ctx : Core.Context := { fileName := "<strict>", fileMap := default }
  let st : Core.State := { env := env }
  let (xs, _) ← (Lean.collectAxioms name : CoreM (Array Name)).toIO ctx st
  return xs.toList

end OproverStrict

open OproverStrict in
unsafe def main (args : List String) : IO UInt32 := do
  let [compiled, reference, nameText] := args
    | do IO.eprintln "usage: StrictCheck COMPILED.lean REFERENCE.lean THEOREM_NAME"; return 2
  let name := nameText.toName
  initSearchPath (← findSysroot)
  enableInitializersExecution
  let (refEnv, refErrors) ← elabFile reference
  if !refErrors.isEmpty then
    return (← report false false 0 [] ("reference does not elaborate" :: refErrors.toList))
  let (env, errors) ← elabFile compiled
  if !errors.isEmpty then
    return (← report false false 0 [] ("compiled file does not elaborate" :: errors.toList))
  let some refInfo := refEnv.find? name
    | report false false 0 [] [s!"reference has no {name}"]
  let some info := env.find? name
    | report false false 0 [] [s!"compiled file has no {name}"]
  let typeMatches := info.type == refInfo.type && info.levelParams == refInfo.levelParams
  -- Replay what the compiled file added on top of the bare imports: the kernel checks every declaration again.
  let fresh ← importModules (env.header.moduleNames.map fun m => { module := m }) {} 0
  let added := localConstants env
  let replayed : Except String Nat ← try
      let _ ← fresh.replay added
      pure (.ok added.size)
    catch e => pure (.error (toString e))
  let axiomList ← axiomsOf env name
  let nonStandard := axiomList.filter (fun a => !standardAxioms.contains a)
  match replayed with
  | .error e => report false typeMatches 0 axiomList [s!"kernel replay failed: {e}"]
  | .ok n =>
    let problems := (if typeMatches then [] else [s!"type of {name} differs from the reference"]) ++
      (if nonStandard.isEmpty then [] else [s!"non-standard axioms: {nonStandard}"])
    report (typeMatches && nonStandard.isEmpty) typeMatches n axiomList problems
