"""transferkit.select: which pretrained model to use, without fine-tuning every candidate.

- :mod:`~transferkit.select.scores`: training-free transferability scores on frozen features (LogME, LEEP, NCE,
  H-score and its shrinkage variant, leave-one-out kNN, SFDA) and their ensemble;
- :mod:`~transferkit.select.source_preds`: source-class predictions for LEEP/NCE (a timm classifier head, or
  N-LEEP's Gaussian-mixture pseudo classes);
- :mod:`~transferkit.select.model_embed` / :mod:`~transferkit.select.dataset_embed`: model representations from
  weight statistics (+ autoencoder) and dataset representations as image-embedding token sets;
- :mod:`~transferkit.select.ranker` / :mod:`~transferkit.select.trainers`: the cross-attention ranking
  transformer, ListMLE/pairwise losses, and the named Lightning trainers;
- :mod:`~transferkit.select.pipeline` / :mod:`~transferkit.select.learned` / :mod:`~transferkit.select.evaluate`:
  model and dataset embeddings, training and leave-one-dataset-out evaluation of the learned ranker from the
  results table (:mod:`transferkit.results`);
- :mod:`~transferkit.select.rank` / :mod:`~transferkit.select.benchmark`: training-free ranking of backbones for
  a dataset, and the class-subset benchmark that measures a results table.

The command is ``transferkit rank`` (:mod:`transferkit.commands.rank`); see docs/rank.md.
"""
