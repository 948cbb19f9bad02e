import sys

from bloomz_runtime.benchmarks.runner import main

sys.exit(main())
