<#
.SYNOPSIS
    Runs the LifeOS cycle (tools/run_full_cycle.py) from Windows.

.DESCRIPTION
    Finds Python 3 (the project's .venv\Scripts\python.exe when it exists: it has detect-secrets,
    which the cycle's commit scan needs, and the eval packages; else the "py -3" launcher, then
    "python" on PATH), passes every argument through unchanged to tools/run_full_cycle.py, and
    exits with the script's exit code.
    The project root defaults to this script's folder when --project-root is not given.

.EXAMPLE
    .\run-full-cycle.ps1 --dry-run
    .\run-full-cycle.ps1 --sweep-dir D:\sweeps\v3 --reference-dir D:\training_images --lora-version v3
#>
$ErrorActionPreference = 'Stop'
$here = Split-Path -Parent $MyInvocation.MyCommand.Path
$script = Join-Path $here 'tools\run_full_cycle.py'

$python = $null
$prefix = @()
$venvPython = Join-Path $here '.venv\Scripts\python.exe'
if (Test-Path -LiteralPath $venvPython) {
    $python = $venvPython
} elseif (Get-Command py -ErrorAction SilentlyContinue) {
    $python = 'py'
    $prefix = @('-3')
} elseif (Get-Command python -ErrorAction SilentlyContinue) {
    $python = 'python'
} else {
    [Console]::Error.WriteLine('error: Python 3 not found: install it from python.org (it adds the "py" launcher) or put python on PATH')
    exit 2
}

$passThrough = @($args)
if (-not ($passThrough -contains '--project-root')) {
    $passThrough = @('--project-root', $here) + $passThrough
}

& $python @prefix $script @passThrough
exit $LASTEXITCODE
