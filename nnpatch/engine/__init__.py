"""The engine: traced passes of the recurrent forward (`trace`), the answer metrics computed
inside them (`metrics`), the cells a recipe names (`plan`), gradients through the thought
loop (`gradients`), and the analysis modes built on them (`modes`)."""
