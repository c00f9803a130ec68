"""Tasks from decoded frame to outcome, whatever the transport: the ports the twins implement
(``ports``), a client's arrays of tasks (``dispatch``), what becomes of an outcome
(``outcomes``), the service-wide workload (``workload``), running a task in this process
(``work``, ``processor``, ``inputs``), and the in-memory twins (``results``, ``sessions``)."""
