"""The fleet's view of itself: process records, paused queues and throughput (``state``), the
gate consumers consult before they fetch (``gate``)."""
