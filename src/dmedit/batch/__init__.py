"""Many runs: jobs files and folders of videos to checked jobs, the record of done jobs, the job
queue, and where jobs run (this process, local worker processes, Ray actors)."""
