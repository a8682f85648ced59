import sys

from nnmeter.cli.main import main

sys.exit(main())
