import sys

from bloomz_runtime.client.cli import main

sys.exit(main())
