from cc_kernel.kernel.app import main

main()
