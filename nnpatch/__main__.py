from nnpatch.cli import main

main()
