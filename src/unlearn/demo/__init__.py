from unlearn.demo.run import run_demo
