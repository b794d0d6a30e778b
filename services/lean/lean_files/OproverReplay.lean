/-
oprover-replay: the step of oprover-serve's Lean checker whose verdict alone decides a `pass` (docs/lean.md).

    oprover-replay REQUEST.json        (run in the Mathlib project: `lake env …/oprover-replay REQUEST.json`)

REQUEST.json (written by services/lean/replay.py):

    {"candidate": "…/candidate.olean", "reference": "…/reference.olean" | null, "imports": ["Mathlib", …],
     "theorems": [["Ns", "name"], …], "permittedAxioms": ["propext", "Classical.choice", "Quot.sound"]}

The two files are what the repl's `pickleTo` wrote: an environment's imports and the constants it added on top of
them (REPL/Snapshots.lean, `CommandSnapshot.pickle`). The candidate's comes from a REPL that elaborated model code,
so it is read as data and trusted for nothing. This program elaborates nothing and runs nothing from either file:

1. both files must sit on exactly the request's imports (`Init` aside); those modules are imported from the
   read-only toolchain and Mathlib, never from a file's say-so;
2. every constant the candidate added is sent to the kernel (`Environment.replay`: definitions, theorems,
   inductives with their generated constructors and recursors checked for identity);
3. per requested theorem: it must be one of the candidate's own constants and a theorem; its type in the replayed
   environment must be the same `Expr` (and universe parameters) as in the reference, and every constant of the
   reference's own that the type mentions must be the very same constant in the candidate; its axioms are collected
   by walking the replayed constants it uses and must be among `permittedAxioms`.

The last line on stdout is the verdict (exit 0 only when `ok`):

    {"ok": true, "replayed": 5, "theorems": [{"name": "t", "axioms": ["propext"], "typeMatches": true}], "errors": []}
-/
import Lean
import Lean.Replay

open Lean

namespace OproverReplay

/-- The layout `pickleTo` writes for a command environment: imports, the added constants, then command state that
this program never reads (left opaque). -/
abbrev Pickled := Array Import × PHashMap Name ConstantInfo × NonScalar

structure Request where
  candidate : String
  reference : Option String
  imports : Array String
  theorems : Array (Array String)
  permittedAxioms : Array String
  deriving FromJson

structure TheoremVerdict where
  name : String
  axioms : Array String
  typeMatches : Option Bool
  deriving ToJson

structure Verdict where
  ok : Bool
  replayed : Nat
  theorems : Array TheoremVerdict
  errors : Array String
  deriving ToJson

def refuse (why : String) : Verdict := { ok := false, replayed := 0, theorems := #[], errors := #[why] }

/-- Read an environment file as data: its objects are mapped into memory, nothing in it is run. -/
unsafe def readPickled (path : String) : IO (Array Name × Std.HashMap Name ConstantInfo) := do
  let (data, _region) ← readModuleData path
  let pickled : Pickled := unsafeCast data
  return (pickled.1.map (·.module), Std.HashMap.ofList pickled.2.1.toList)

def withoutInit (modules : Array Name) : Array String :=
  ((modules.filter (· != `Init)).map toString).qsort (fun a b => a < b)

def nameOf (parts : Array String) : Name := parts.foldl Name.str Name.anonymous

def kindOf : ConstantInfo → String
  | .axiomInfo _ => "axiom"
  | .defnInfo _ => "definition"
  | .thmInfo _ => "theorem"
  | .opaqueInfo _ => "opaque"
  | .quotInfo _ => "quotient"
  | .inductInfo _ => "inductive"
  | .ctorInfo _ => "constructor"
  | .recInfo _ => "recursor"

def sameConstant (a b : ConstantInfo) : Bool :=
  kindOf a == kindOf b && a.levelParams == b.levelParams && a.type == b.type && a.value? == b.value?

/-- The kernel replay: every added constant checked again, on top of the imports alone. -/
def replayInto (env : Environment) (added : Std.HashMap Name ConstantInfo) : IO (Except String Environment) := do
  try
    return .ok (← env.replay added)
  catch e =>
    return .error (toString e)

/-- The axioms `root` depends on, walking the constants of `env` (as `#print axioms` does, but on the replayed
environment). A constant missing from `env` is an error. -/
def axiomsOf (env : Environment) (root : Name) : Except String (Array Name) := Id.run do
  let mut todo : Array Name := #[root]
  let mut seen : NameSet := {}
  let mut found : Array Name := #[]
  while 0 < todo.size do
    let n := todo[todo.size - 1]!
    todo := todo.pop
    if seen.contains n then
      continue
    seen := seen.insert n
    match env.find? n with
    | none => return .error s!"{n} is not in the replayed environment"
    | some (.axiomInfo _) => found := found.push n
    | some info =>
      for used in info.getUsedConstantsAsSet do
        todo := todo.push used
  return .ok found

/-- Constants of the reference's own (not imported) that `type` mentions, directly or through their definitions:
each must be the very same constant in the candidate, or the same type would not mean the same statement. -/
def referenceDependencies (reference : Std.HashMap Name ConstantInfo) (target : Name) (type : Expr) : Array Name :=
  Id.run do
    let mut todo := type.getUsedConstants
    let mut seen : NameSet := {}
    let mut out : Array Name := #[]
    while 0 < todo.size do
      let n := todo[todo.size - 1]!
      todo := todo.pop
      if seen.contains n || n == target then
        continue
      seen := seen.insert n
      if let some info := reference[n]? then
        out := out.push n
        for used in info.getUsedConstantsAsSet do
          todo := todo.push used
    return out

unsafe def run (request : Request) : IO Verdict := do
  let expected := request.imports.map (·.toName)
  let (candidateImports, added) ← readPickled request.candidate
  if withoutInit candidateImports != withoutInit expected then
    return refuse s!"the environment file imports {candidateImports}, not {expected}"
  let reference? : Option (Std.HashMap Name ConstantInfo) ← match request.reference with
    | none => pure none
    | some path => do
      let (referenceImports, constants) ← readPickled path
      if withoutInit referenceImports != withoutInit expected then
        throw <| IO.userError s!"the reference file imports {referenceImports}, not {expected}"
      pure (some constants)
  initSearchPath (← findSysroot)
  let modules := (#[`Init] ++ expected.filter (· != `Init)).map fun m => ({ module := m } : Import)
  let base ← importModules modules {} 0
  let replayed ← replayInto base added
  if let .error e := replayed then
    return refuse s!"kernel replay failed: {e}"
  let .ok env := replayed | return refuse "kernel replay failed"
  let permitted := request.permittedAxioms.map (·.toName)
  let mut errors : Array String := #[]
  let mut judged : Array TheoremVerdict := #[]
  for parts in request.theorems do
    let name := nameOf parts
    let some info := env.find? name
      | do errors := errors.push s!"{name} is not in the replayed environment"; continue
    unless added.contains name do
      errors := errors.push s!"{name} is not a constant the checked code added"
    unless kindOf info == "theorem" do
      errors := errors.push s!"{name} is a {kindOf info}, not a theorem"
    let mut axioms : Array Name := #[]
    match axiomsOf env name with
    | .ok found => axioms := found
    | .error e => errors := errors.push e
    for a in axioms do
      unless permitted.contains a do
        errors := errors.push s!"{name} depends on the axiom {a}, which is not permitted"
    let mut typeMatches : Option Bool := none
    if let some reference := reference? then
      match reference[name]? with
      | none => errors := errors.push s!"the reference has no {name}"
      | some wanted =>
        let same := info.type == wanted.type && info.levelParams == wanted.levelParams
        let mut sameDeps := true
        for dep in referenceDependencies reference name wanted.type do
          match env.find? dep, reference[dep]? with
          | some mine, some theirs =>
            unless sameConstant mine theirs do
              sameDeps := false
              errors := errors.push s!"{dep}, used by the statement of {name}, differs from the reference's"
          | _, _ =>
            sameDeps := false
            errors := errors.push s!"{dep}, used by the statement of {name}, is missing"
        typeMatches := some (same && sameDeps)
        unless same do
          errors := errors.push s!"the type of {name} is not the requested statement's"
    judged := judged.push { name := toString name, axioms := axioms.map toString, typeMatches }
  return { ok := errors.isEmpty, replayed := added.size, theorems := judged, errors }

/-- The verdict on a request file; any exception (an unreadable file, a missing module) is a refusal. -/
unsafe def judge (requestPath : String) : IO Verdict := do
  try
    let json ← IO.ofExcept (Json.parse (← IO.FS.readFile requestPath))
    let request ← IO.ofExcept (fromJson? json : Except String Request)
    run request
  catch e =>
    return refuse s!"{e}"

end OproverReplay

open OproverReplay in
unsafe def main (args : List String) : IO UInt32 := do
  let [requestPath] := args
    | do IO.eprintln "usage: oprover-replay REQUEST.json"; return 2
  let verdict ← judge requestPath
  IO.println (toJson verdict).compress
  return if verdict.ok then 0 else 1
