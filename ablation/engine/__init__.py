"""One training job, on one device or K together: the training loop (``train``), durable epoch checkpoints
(``checkpoint``), the little of torch.distributed it needs (``distributed``), top-k error (``metrics``), what it ran
on (``environment``), and the malloc and OpenMP settings of a training process (``host_memory``, ``threads``).

May import ``core``, ``attention``, ``models``, ``data``, ``experiment`` and ``tracking`` (the tracker interface and
metric names: a job reports through a ``Tracker`` and never talks to MLflow itself).
"""
