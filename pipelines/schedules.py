import dagster as dg

from pipelines.jobs import reconcile_job, sweep_job, usage_report_job

usage_report_schedule = dg.build_schedule_from_partitioned_job(
    usage_report_job, hour_of_day=0, minute_of_hour=30, default_status=dg.DefaultScheduleStatus.RUNNING
)

sweeper_schedule = dg.ScheduleDefinition(
    job=sweep_job, cron_schedule="*/5 * * * *", default_status=dg.DefaultScheduleStatus.RUNNING
)

reconcile_schedule = dg.ScheduleDefinition(
    job=reconcile_job, cron_schedule="17 * * * *", default_status=dg.DefaultScheduleStatus.RUNNING
)
