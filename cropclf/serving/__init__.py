"""The shipped model: `export` writes the SavedModel (its in-graph crop mirrors `data.crops.canonical_crop`,
its metadata carries labels, heads and preprocessing); `prediction` classifies with that SavedModel alone
(no Keras). Nothing is imported here, so serving never loads the training code.
"""
