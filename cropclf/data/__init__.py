"""From regions to model inputs: decoding (`images`), crop geometry and the one croppable rule (`crops`),
each region's neighbourhood decoded once (`patches`), augmentation (`augment`), the Keras input
(`sequence`), label maps (`labels`), splits by image (`splits`), and config or run directory -> all of
these (`loading`). Nothing is imported here: `crops` and `images` serve without Keras.
"""
