from dmedit.cli import main

main()
