"""The shapes world: a CPU-scale GenEval testbed.

32 x 32 images of red/green/blue/yellow/purple/orange circles, squares and triangles on light grey.
Prompts use GenEval's metadata format and six tags (:mod:`worlds.shapes.prompts`), images are drawn by
:mod:`worlds.shapes.scene`, scored by a classical detector (:mod:`worlds.shapes.detector`) feeding GenEval's
scoring rules (:mod:`rewards.geneval`), and exposed as the reward ``shapes_geneval`` (:mod:`worlds.shapes.reward`).
"""
