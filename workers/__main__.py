import sys

from workers.commands import main

sys.exit(main())
