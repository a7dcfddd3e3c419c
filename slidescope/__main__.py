from slidescope.cli import main

main()
