import sys

from bloomz_api.client.cli import main

sys.exit(main())
