from fmnist.app.cli import main

raise SystemExit(main())
