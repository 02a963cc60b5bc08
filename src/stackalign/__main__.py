from stackalign.cli import main

raise SystemExit(main())
