"""Generate the student template and the student notebook from the reference solution.

    python handout/make_student.py           # write student_template.py, handout/experiment6_student.ipynb
                                             # and grader/shipped.json (their fingerprints, for the grader)
    python handout/make_student.py --check   # exit 1 if a committed file differs from a fresh generation
    python handout/make_student.py --bundle experiment6_student.zip   # what the instructor hands out
                                             # (a folder instead when the name does not end in .zip)

experiment6.py marks the code students write with "### BEGIN SOLUTION" / "### END SOLUTION". Each such
region becomes a bilingual TODO prompt and a `raise NotImplementedError("Step N: ...")` stub. The prompts
live here (PROMPTS), keyed by the function that holds the region, so experiment6.py stays plain code;
a region without a prompt, or a prompt without a region, stops the generation.

build_template(text, solutions=True) and build_notebook(text, solutions=True) keep the solution code
and only drop the marker lines: the tests and the grader use them to get a full-marks submission.
"""
import argparse
import ast
import fnmatch
import json
import re
import sys
import textwrap
import zipfile
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from grader.sources import MANIFEST, fingerprint  # noqa: E402  (the grader's own fingerprint: stdlib only)

REFERENCE = ROOT / "experiment6.py"
TEMPLATE = ROOT / "student_template.py"
NOTEBOOK = ROOT / "handout" / "experiment6_student.ipynb"
# The notebook's kernel: the one the handout registers (python -m ipykernel install --user --name exp6 ...).
KERNEL = {"name": "exp6", "display_name": "Python (exp6)", "language": "python"}
# Kit files besides the template and the notebook that a student may hand in untouched (fingerprinted in
# grader/shipped.json, so that the grader never grades them). The grader package itself is recognised by
# its place (a grader/ folder), not listed: it changes too often to keep a list of it in step.
SHIPPED_FILES = ["handout/warmup_gan.py", "handout/challenge_unet.py", "data/*.py"]

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STEP_HEADER = re.compile(r"^# STEP (\d+) ·")
RULE = re.compile(r"^# ={20,}$")  # the "# =====" lines around every section title
# The section title after Step 5 that starts the given infrastructure: no solution region below it.
FENCE = re.compile(r"^# 以下为已提供的基础设施，无需阅读 / Given infrastructure")

# --------------------------------------------------------------------------------------------------
# What replaces each solution region: (Chinese, English). Facts from the handout, in our own words.
# --------------------------------------------------------------------------------------------------

PROMPTS = {
    "PairedMedicalDataset.__init__": ("""
        列出 t1_dir 和 t2_dir 中的 .png 文件（扩展名不分大小写，.PNG 也算：f.lower().endswith(".png")），
        各自按文件名排序，存为 self.t1_paths 和 self.t2_paths（排序后第 i 个 T1 与第 i 个 T2 是同一张切片）。
        再定义 self.transform：Resize((256, 256)) -> ToTensor() -> Normalize(mean=[0.5], std=[0.5])，
        把像素从 [0, 255] 变到 [-1, 1]，与生成器 Tanh 的输出范围一致。
        注意：self.transform 也写在 __init__ 里（与上面的赋值同样缩进）。
        """, """
        List the .png files in t1_dir and in t2_dir (in any case, .PNG too: f.lower().endswith(".png")),
        sort each list by file name and keep them as self.t1_paths and self.t2_paths (after sorting, the
        i-th T1 and the i-th T2 are the same slice).
        Then build self.transform: Resize((256, 256)) -> ToTensor() -> Normalize(mean=[0.5], std=[0.5]),
        which maps pixels from [0, 255] to [-1, 1], the range of the generator's Tanh.
        Note: self.transform goes inside __init__ too (same indentation as the assignments above).
        """),
    "PairedMedicalDataset.__len__": ("""
        返回配对的数量：两个路径列表中较短者的长度。
        """, """
        Return the number of pairs: the length of the shorter of the two path lists.
        """),
    "PairedMedicalDataset.__getitem__": ("""
        打开第 idx 个 T1 与 T2 图像，用 .convert("L") 转成单通道灰度图，各自经过 self.transform，
        返回 (t1, t2)：两个形状为 (1, 256, 256)、取值在 [-1, 1] 的 float32 张量。
        """, """
        Open the idx-th T1 and T2 images, make them one-channel grayscale with .convert("L"), apply
        self.transform to each and return (t1, t2): float32 tensors of shape (1, 256, 256) in [-1, 1].
        """),
    "Generator.__init__": ("""
        用 nn.Sequential 搭建编码器-解码器，存为 self.model（每层都是 kernel 4、stride 2、padding 1）：
          编码 256 -> 128 -> 64：Conv2d(1, 64) + LeakyReLU(0.2)；Conv2d(64, 128) + BatchNorm2d(128) + LeakyReLU(0.2)
          解码 64 -> 128 -> 256：ConvTranspose2d(128, 64) + BatchNorm2d(64) + ReLU；ConvTranspose2d(64, 1) + Tanh
        """, """
        Build the encoder-decoder as self.model = nn.Sequential(...) (every layer: kernel 4, stride 2, padding 1):
          encode 256 -> 128 -> 64: Conv2d(1, 64) + LeakyReLU(0.2); Conv2d(64, 128) + BatchNorm2d(128) + LeakyReLU(0.2)
          decode 64 -> 128 -> 256: ConvTranspose2d(128, 64) + BatchNorm2d(64) + ReLU; ConvTranspose2d(64, 1) + Tanh
        """),
    "Generator.forward": ("""
        x 的形状为 (N, 1, 256, 256)；返回 self.model(x)：形状相同，取值在 [-1, 1]。
        """, """
        x has shape (N, 1, 256, 256); return self.model(x): the same shape, values in [-1, 1].
        """),
    "Discriminator.__init__": ("""
        搭建 self.model = nn.Sequential(...)（简化的 PatchGAN，输入是 T1 与 T2 拼接后的 2 个通道）：
          Conv2d(2, 64, 4, 2, 1) + LeakyReLU(0.2)                       256 -> 128
          Conv2d(64, 128, 4, 2, 1) + BatchNorm2d(128) + LeakyReLU(0.2)  128 -> 64
          Conv2d(128, 1, 4, 1, 1) + Sigmoid                             64 -> 63，每个值给一个局部区域打分
        """, """
        Build self.model = nn.Sequential(...) (a small PatchGAN; its input is T1 and T2 stacked as 2 channels):
          Conv2d(2, 64, 4, 2, 1) + LeakyReLU(0.2)                       256 -> 128
          Conv2d(64, 128, 4, 2, 1) + BatchNorm2d(128) + LeakyReLU(0.2)  128 -> 64
          Conv2d(128, 1, 4, 1, 1) + Sigmoid                             64 -> 63, one score per image patch
        """),
    "Discriminator.forward": ("""
        沿通道维拼接 T1 (x1) 与真实或生成的 T2 (x2)：torch.cat([x1, x2], dim=1) 得到 (N, 2, 256, 256)，
        送入 self.model，返回 (N, 1, 63, 63) 的概率图，取值在 (0, 1)（1 = 真实配对）。
        """, """
        Stack the T1 (x1) and a real or generated T2 (x2) along the channel axis: torch.cat([x1, x2], dim=1)
        gives (N, 2, 256, 256); return self.model of it, a (N, 1, 63, 63) map of probabilities in (0, 1)
        (1 = a real pair).
        """),
    "build_losses": ("""
        创建并返回 (criterion_GAN, criterion_L1)：nn.BCELoss()（判别器以 Sigmoid 结尾，输出的是概率）
        和 nn.L1Loss()（逐像素平均绝对误差）。
        """, """
        Create and return (criterion_GAN, criterion_L1): nn.BCELoss() (the discriminator ends in a Sigmoid,
        so it outputs probabilities) and nn.L1Loss() (mean absolute pixel error).
        """),
    "build_optimizers": ("""
        为 G 和 D 各建一个 torch.optim.Adam（分别优化 G.parameters() 和 D.parameters()），
        使用参数 lr 和 betas（默认 2e-4 与 (0.5, 0.999)，不要写死），返回 (optimizer_G, optimizer_D)。
        """, """
        Create one torch.optim.Adam for G and one for D (over G.parameters() and D.parameters()) with the
        lr and betas arguments (defaults 2e-4 and (0.5, 0.999); do not hard-code them) and return
        (optimizer_G, optimizer_D).
        """),
    "train_step": ("""
        训练一个 batch（讲义第 4 步的循环体；t1、t2 已在 device 上，循环本身由下面给出的 train() 负责）。
        先更新 G：fake_t2 = G(t1)，pred_fake = D(t1, fake_t2)，
          loss_G = criterion_GAN(pred_fake, 全 1) + lambda_l1 * criterion_L1(fake_t2, t2)，
          然后 optimizer_G.zero_grad()、loss_G.backward()、optimizer_G.step()。
        再更新 D：真实配对 D(t1, t2) 的目标是全 1，生成配对 D(t1, fake_t2.detach()) 的目标是全 0，
          loss_D = 0.5 * (loss_real + loss_fake)（两项的平均），同样 zero_grad、backward、step。
        返回 (loss_G.item(), loss_D.item())：两个 Python float。
        提示：目标用 torch.ones_like / torch.zeros_like 生成；用参数 lambda_l1，不要写死 100。
        """, """
        Train on one batch (the body of the handout's Step 4 loop; t1 and t2 are already on the device,
        and the loop itself is train(), given below).
        G first: fake_t2 = G(t1), pred_fake = D(t1, fake_t2),
          loss_G = criterion_GAN(pred_fake, all ones) + lambda_l1 * criterion_L1(fake_t2, t2),
          then optimizer_G.zero_grad(), loss_G.backward(), optimizer_G.step().
        Then D: the real pair D(t1, t2) has target all ones, the generated pair D(t1, fake_t2.detach())
          all zeros; loss_D = 0.5 * (loss_real + loss_fake) (the mean of the two); zero_grad, backward, step again.
        Return (loss_G.item(), loss_D.item()): two Python floats.
        Hints: make the targets with torch.ones_like / torch.zeros_like; use lambda_l1, not a fixed 100.
        """),
    "visualize": ("""
        第 5 步没有参考代码。对 indices 中的每个下标 i：t1, t2 = dataset[i]，生成器的输入要有 batch 维：
        G(t1.unsqueeze(0).to(device)) 的形状为 (1, 1, 256, 256)，结果用 .cpu() 移回 CPU。
        作图：每个下标一行，三列依次为 T1 输入 | 生成的 T2 | 真实 T2（cmap="gray"，先把 [-1, 1] 换算到 [0, 1]）；
        有 title 时作为总标题；保存到 path，关闭图，返回 path。
        提示：推理前调用 G.eval()，推理放在 with torch.no_grad(): 中；用 plt.subplot(...)（或 plt.subplots）
        排版；最后调用 G.train()，训练才能继续。
        """, """
        Step 5 has no reference code. For each index i in indices: t1, t2 = dataset[i]; the generator needs a
        batch axis: G(t1.unsqueeze(0).to(device)) has shape (1, 1, 256, 256); bring the result back with .cpu().
        Figure: one row per index, three columns T1 input | generated T2 | real T2 (cmap="gray", map [-1, 1] to
        [0, 1] first); use title as the figure title if given; save to path, close the figure, return path.
        Hints: call G.eval() before inference and run it inside with torch.no_grad():; lay out the panels with
        plt.subplot(...) (or plt.subplots); call G.train() at the end so training can continue.
        """),
}

TEMPLATE_DOCSTRING = '''\
"""实验六 · Experiment 6 学生模板 / student template: T1 -> T2 MRI translation with a conditional GAN.

请对照讲义补全标有 TODO 的部分（第 1-5 步），并删掉其后的 raise NotImplementedError(...)；其余代码已给出。
Fill in the parts marked TODO (Steps 1-5, see the handout) and delete the raise NotImplementedError(...)
after each; everything else is given.

    Step 1  PairedMedicalDataset   paired T1/T2 PNG slices           (search: "STEP 1")
    Step 2  Generator, Discriminator                                  (search: "STEP 2")
    Step 3  build_losses, build_optimizers                            (search: "STEP 3")
    Step 4  train_step (one batch); train, the epoch loop, is given   (search: "STEP 4")
    Step 5  visualize (T1 input | generated T2 | real T2)             (search: "STEP 5")

第 5 步之后的“以下为已提供的基础设施，无需阅读”一行以下都是给定代码（命令行、数据检查、评估、画图、断点续训），
不必阅读，也不要修改。/ Below the line "Given infrastructure" after Step 5 all code is given (command line,
data checks, evaluation, plots, checkpoints): you need not read it, and should not change it.

运行 / Run:        python student_template.py --epochs 1     (试运行 / a quick trial; the handout uses 50)
自查 / Self-check: python -m grader student_template.py

此文件由 handout/make_student.py 根据教师的参考解生成。教师请勿手工修改：改参考解后重新生成。
Generated by handout/make_student.py from the instructor's reference solution. Instructors: do not
edit it by hand; change the reference (or the prompts in make_student.py) and regenerate.
"""
'''

# --------------------------------------------------------------------------------------------------
# Notebook text
# --------------------------------------------------------------------------------------------------

NOTEBOOK_TITLE = """\
# 实验六 · 基于条件 GAN 的 T1 → T2 MRI 模态转换
**Experiment 6 · T1 → T2 MRI translation with a conditional GAN**

1. 从上到下依次运行各单元。第一个单元找到实验包根目录并切换到那里（从 `handout/` 或根目录打开均可）。
2. 对照讲义，在标有 `TODO` 的位置补全第 1-5 步，并删掉其后的 `raise NotImplementedError(...)`。
3. 最后的“运行”单元训练模型并显示结果图。
4. 自查：在实验包根目录运行 `python -m grader handout/experiment6_student.ipynb`。

1. Run the cells from top to bottom. The first cell finds the kit root and works from there (open the
   notebook from `handout/` or from the kit root).
2. Following the handout, fill in Steps 1-5 where it says `TODO` and delete the
   `raise NotImplementedError(...)` after each.
3. The "Run" cells at the end train the model and show the result figure.
4. Self-check: from the kit root, run `python -m grader handout/experiment6_student.ipynb`.

*本 notebook 由 `handout/make_student.py` 生成 / generated by `handout/make_student.py`.*"""

TAGS_TEXT = """\
#### 单元格标签 `run` / The `run` tag
启动训练、显示结果或做检验的单元格带有标签 `run`。评分器**跳过**带 `run` 标签的单元格，只执行其余单元格（函数和类的定义）。
所以：自己加的探索或检验单元格请加上 `run` 标签；没有标签的单元格里只写定义，不要写训练、读数据或画图的语句。
Jupyter 默认不显示标签：JupyterLab 4 / Notebook 7 中选中单元格，在右侧边栏的齿轮图标（Property Inspector）→ *Cell Tags*
查看和添加；经典 Notebook 6：*View → Cell Toolbar → Tags*；VS Code：安装 *Jupyter Cell Tags* 扩展后用 *Add Cell Tag*。

Cells that start training, show results or check your code carry the tag `run`. The grader **skips** cells tagged `run`
and runs the others (the definitions of functions and classes). So tag your own exploration or check cells `run`,
and keep untagged cells to definitions: no training, data loading or plotting statements in them.
Jupyter hides tags by default: in JupyterLab 4 / Notebook 7 select the cell and open the gear icon (Property Inspector)
in the right sidebar → *Cell Tags*; classic Notebook 6: *View → Cell Toolbar → Tags*; VS Code: the *Jupyter Cell Tags*
extension's *Add Cell Tag*."""

# Self-checks after Steps 1 and 2 (the handout's "检验一下" snippets), tagged "run" so the grader skips them.
CHECK_CELLS = {
    1: """\
# 检验第 1 步（标签 run：评分器跳过此单元）/ Check Step 1 (tagged run: the grader skips this cell)
try:
    if os.path.isdir("dataset/ixi2000"):
        _root = "dataset/ixi2000"
    else:  # the built-in phantoms, drawn on first use (the setup cell made the kit root importable)
        from data.phantoms import make_phantom_dataset
        _root = make_phantom_dataset("data/phantoms")
    _dataset = PairedMedicalDataset(os.path.join(_root, "trainA"), os.path.join(_root, "trainB"))
    _t1, _t2 = _dataset[0]
    print(len(_dataset), tuple(_t1.shape), _t1.dtype, _t1.min().item(), _t1.max().item())  # 120 (1, 256, 256) torch.float32 -1.0 ...
except NotImplementedError as e:
    print(f"尚未完成 / not implemented yet: {e}")""",
    2: """\
# 检验第 2 步（标签 run）/ Check Step 2 (tagged run)
try:
    _x = torch.randn(2, 1, 256, 256)
    _G, _D = Generator(), Discriminator()
    print(tuple(_G(_x).shape), tuple(_D(_x, _G(_x)).shape))  # (2, 1, 256, 256) (2, 1, 63, 63)
except NotImplementedError as e:
    print(f"尚未完成 / not implemented yet: {e}")""",
}

SETUP_CELL = """\
# 准备：找到实验包根目录（含 data/phantoms.py 的文件夹）并在那里运行，与 python student_template.py 一致。
# Setup: find the kit root (the folder with data/phantoms.py) and work there, as student_template.py does.
import os
import sys
from pathlib import Path

for _root in (Path.cwd(), Path.cwd().parent):
    if (_root / "data" / "phantoms.py").is_file():
        os.chdir(_root)
        if str(_root) not in sys.path:
            sys.path.insert(0, str(_root))
        print(f"工作目录 / working directory: {_root}")
        break
else:
    print("未找到实验包根目录（data/phantoms.py）：请从实验包的 handout/ 文件夹或根目录打开本 notebook。\\n"
          "Kit root (data/phantoms.py) not found: open this notebook from the kit's handout/ folder or root.")"""

SECTION_TEXT = {
    "prelude": """\
### 导入（给定）/ Imports (given)
直接运行即可。Just run this cell.""",
    1: """\
### 第 1 步 · 配对数据集 / Step 1 · Paired dataset
- 补全 `PairedMedicalDataset` 的三个方法：T1 与 T2 图像按排序后的文件名一一配对。
- `__getitem__` 返回 `(t1, t2)`：两个形状为 `(1, 256, 256)`、取值在 `[-1, 1]` 的张量。

- Fill in the three methods of `PairedMedicalDataset`: T1 and T2 images pair up by sorted file name.
- `__getitem__` returns `(t1, t2)`: two tensors of shape `(1, 256, 256)` with values in `[-1, 1]`.""",
    2: """\
### 第 2 步 · 生成器与判别器 / Step 2 · Generator and discriminator
- 生成器：T1 `(N, 1, 256, 256)` → 同形状的 T2，Tanh 输出范围 `[-1, 1]`。
- 判别器：T1 与 T2 沿通道拼接成 `(N, 2, 256, 256)` → `(N, 1, 63, 63)` 的概率图，每个值判断一个局部区域。

- Generator: a T1 `(N, 1, 256, 256)` → a T2 of the same shape, Tanh output in `[-1, 1]`.
- Discriminator: T1 and T2 stacked on the channel axis, `(N, 2, 256, 256)` → a `(N, 1, 63, 63)` map of
  probabilities, one verdict per image patch.""",
    3: """\
### 第 3 步 · 损失函数与优化器 / Step 3 · Losses and optimizers
- 对抗损失用 `nn.BCELoss`，像素损失用 `nn.L1Loss`。
- G 与 D 各用一个 Adam：lr = 2e-4，betas = (0.5, 0.999)。

- `nn.BCELoss` for the adversarial loss, `nn.L1Loss` for the pixel loss.
- One Adam each for G and D: lr = 2e-4, betas = (0.5, 0.999).""",
    4: """\
### 第 4 步 · 训练 / Step 4 · Training
- 补全 `train_step`：在一个 batch 上先更新 G（对抗损失 + λ·L1，λ = 100），再更新 D（真实配对 → 1，生成配对 → 0）。
- 返回两个 Python float；遍历 epoch 与 batch 的 `train()` 已给出。

- Fill in `train_step`: on one batch, update G first (adversarial loss + λ·L1, λ = 100), then D
  (real pairs → 1, generated pairs → 0).
- Return two Python floats; `train()`, the loop over epochs and batches, is given.""",
    5: """\
### 第 5 步 · 推理与可视化 / Step 5 · Inference and visualisation
- 补全 `visualize`：`G.eval()` 加 `torch.no_grad()` 推理，每个测试切片一行：T1 输入 | 生成的 T2 | 真实 T2。
- 保存为 PNG 并返回路径；最后调用 `G.train()`。

- Fill in `visualize`: infer under `G.eval()` and `torch.no_grad()`, one row per test slice:
  T1 input | generated T2 | real T2.
- Save it as a PNG and return the path; call `G.train()` at the end.""",
    "fence": """\
## 以下为已提供的基础设施，无需阅读 / Given infrastructure: no need to read on
第 1-5 步就是全部实验内容。以下单元格是给定代码（命令行参数、数据检查、设备与精度、评估、画图、断点续训、`run()` 与 `main()`），
只调用你写的各步；直接依次运行即可，不必阅读，也不要修改。

Steps 1-5 are the whole lab. The cells below are given code (command-line options, data checks, devices and
precision, evaluation, plots, checkpoints, `run()` and `main()`) that only calls your Steps: just run them
in order; you need not read them, and should not change them.""",
    "given": """\
### 给定代码 / Given code: {title}
直接运行即可。Just run this cell.""",
}

RUN_TEXT = """\
## 运行 / Run
- 先训练 1 个 epoch，检查整个流程能否跑通；跑通后把 `"1"` 改为讲义中的 `"50"`。
- 没有 `dataset/ixi2000/` 时使用内置的合成数据；结果保存在 `outputs/notebook/`。

- Train for 1 epoch first to check that everything runs; then change `"1"` to the handout's `"50"`.
- Without `dataset/ixi2000/` the built-in synthetic data is used; results go to `outputs/notebook/`."""

RUN_CELLS = [
    """\
# 试运行 1 个 epoch / a 1-epoch trial run (the handout trains for 50)
exit_code = main(["--epochs", "1", "--out", "outputs/notebook"])""",
    """\
# 显示第 5 步的结果图和损失曲线 / Show the Step 5 figure and the loss curves
import IPython.display as ipd

if exit_code == 0:
    ipd.display(ipd.Image(filename="outputs/notebook/results.png"))
    ipd.display(ipd.Image(filename="outputs/notebook/loss_curves.png"))
else:
    print("先完成上面的步骤 / finish the steps above first")""",
]


# --------------------------------------------------------------------------------------------------
# Template
# --------------------------------------------------------------------------------------------------

def indent_of(line):
    return line[:len(line) - len(line.lstrip())]


def find_regions(lines, tree):
    """Solution regions as dicts: begin/end line indices (0-based, the marker lines), step, owner."""
    owners = []  # (first line, last line, qualified name) of every function, 1-based as ast gives them

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.ClassDef)):
                name = prefix + child.name
                if isinstance(child, ast.FunctionDef):
                    owners.append((child.lineno, child.end_lineno, name))
                visit(child, name + ".")

    visit(tree, "")
    regions, begin, step, fence = [], None, None, None
    for i, line in enumerate(lines):
        header = STEP_HEADER.match(line)
        if header:
            step = int(header.group(1))
        if FENCE.match(line):
            fence = i
        marker = line.strip()
        if marker == BEGIN:
            if begin is not None:
                raise ValueError(f"line {i + 1}: {BEGIN} inside another solution region")
            begin = i
        elif marker == END:
            if begin is None:
                raise ValueError(f"line {i + 1}: {END} without {BEGIN}")
            # The BEGIN line lies within the function's span (the END comment may follow its last statement).
            inside = [name for first, last, name in owners if first <= begin + 1 <= last]
            if not inside:
                raise ValueError(f"line {begin + 1}: solution region outside any function")
            if step is None:
                raise ValueError(f"line {begin + 1}: solution region before the first '# STEP N ·' header")
            if indent_of(lines[i]) != indent_of(lines[begin]):
                raise ValueError(f"lines {begin + 1}-{i + 1}: {BEGIN} and {END} are indented differently")
            regions.append({"begin": begin, "end": i, "step": step, "owner": inside[-1],  # innermost
                            "fence": fence})
            begin = None
    if begin is not None:
        raise ValueError(f"line {begin + 1}: {BEGIN} without {END}")
    return regions


def stub(region, indent):
    """The bilingual TODO comment and the NotImplementedError that replace one solution region."""
    n, name = region["step"], region["owner"]
    zh, en = (textwrap.dedent(text).strip().splitlines() for text in PROMPTS[name])
    lines = [f"TODO 第 {n} 步 / Step {n}: {name}", *zh, *en]
    message = f"Step {n}: 第 {n} 步 · 请补全 / fill in {name}"
    return [f"{indent}# {line}".rstrip() for line in lines] + [f'{indent}raise NotImplementedError("{message}")']


def build_template(source_text, solutions=False):
    """student_template.py as text: the reference with its solution regions blanked (or, with
    solutions=True, kept and only the marker lines dropped) and a docstring for students."""
    tree = ast.parse(source_text)
    lines = source_text.splitlines()
    regions = find_regions(lines, tree)
    owners = {r["owner"] for r in regions}
    missing = sorted(owners - PROMPTS.keys())
    unused = sorted(PROMPTS.keys() - owners)
    if missing or unused or len(owners) != len(regions):
        raise ValueError("solution regions and PROMPTS do not match: "
                         f"regions without a prompt: {missing or '-'}; prompts without a region: {unused or '-'}; "
                         f"functions with more than one region: {len(regions) - len(owners)}")
    below = [r for r in regions if r["fence"] is not None]
    if below:
        raise ValueError(f"line {below[0]['begin'] + 1}: solution region of {below[0]['owner']} below the fence "
                         f"(line {below[0]['fence'] + 1}): what students write belongs to Steps 1-5, above it")

    for region in reversed(regions):  # bottom-up, so earlier line numbers stay valid
        begin, end = region["begin"], region["end"]
        lines[begin:end + 1] = lines[begin + 1:end] if solutions else stub(region, indent_of(lines[begin]))
    doc = tree.body[0]
    if not (isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str)):
        raise ValueError("experiment6.py must start with its module docstring")
    out = TEMPLATE_DOCSTRING.splitlines() + lines[doc.end_lineno:]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------------
# Notebook
# --------------------------------------------------------------------------------------------------

def notebook_code(template_text):
    """The template's code as the notebook runs it: no module docstring, no `if __name__` guard
    (in a kernel, main() would see the kernel's own argv; the "run" cells call main instead)."""
    tree = ast.parse(template_text)
    lines = template_text.splitlines()
    guard = tree.body[-1]
    if not (isinstance(guard, ast.If) and "__name__" in ast.unparse(guard.test)):
        raise ValueError("the script must end with its `if __name__ == \"__main__\":` block")
    return lines[tree.body[0].end_lineno:guard.lineno - 1]


def split_sections(code_lines):
    """[(key, title, source)]: the code cut at every '# ====' / '# title' / '# ====' header."""
    starts = [i for i in range(len(code_lines) - 2)
              if RULE.match(code_lines[i]) and RULE.match(code_lines[i + 2])]
    sections = []
    for a, b in zip([0] + starts, starts + [len(code_lines)]):
        source = "\n".join(code_lines[a:b]).strip("\n")
        if a == 0:
            key, title = "prelude", ""
        else:
            title = code_lines[a + 1][2:].strip()
            step = STEP_HEADER.match(code_lines[a + 1])
            key = int(step.group(1)) if step else "fence" if FENCE.match(code_lines[a + 1]) else "given"
        if source:
            sections.append((key, title, source))
    return sections


def build_notebook(source_text, solutions=False):
    """The student notebook: setup cell, one markdown + one code cell per section, then "run" cells."""
    v4 = nbformat.v4
    # The setup cell is tagged "run" like the training cells: it acts (changes directory) rather than
    # defines, and the grader, which keeps only untagged cells, must not run it.
    cells = [v4.new_markdown_cell(NOTEBOOK_TITLE), v4.new_markdown_cell(TAGS_TEXT),
             v4.new_code_cell(SETUP_CELL, metadata={"tags": ["run", "setup"]})]
    for key, title, source in split_sections(notebook_code(build_template(source_text, solutions))):
        cells.append(v4.new_markdown_cell(SECTION_TEXT[key].replace("{title}", title)))
        cells.append(v4.new_code_cell(source))
        if key in CHECK_CELLS:
            cells.append(v4.new_code_cell(CHECK_CELLS[key], metadata={"tags": ["run"]}))
    cells.append(v4.new_markdown_cell(RUN_TEXT))
    cells += [v4.new_code_cell(source, metadata={"tags": ["run"]}) for source in RUN_CELLS]
    for i, cell in enumerate(cells):
        cell.id = f"cell-{i:02d}"  # nbformat 4.5 wants ids; derived from the position, so output is stable
    nb = v4.new_notebook(cells=cells, metadata={"kernelspec": dict(KERNEL), "language_info": {"name": "python"}})
    nb.nbformat, nb.nbformat_minor = 4, 5
    return nb


def notebook_text(nb):
    text = nbformat.writes(nb)
    return text if text.endswith("\n") else text + "\n"


# --------------------------------------------------------------------------------------------------
# Student bundle: what the instructor hands out, without the solution
# --------------------------------------------------------------------------------------------------

BUNDLE_TOP = "experiment6_student"  # the one folder a student's unzip creates
# Kit files that go into the bundle, as globs relative to the kit root (missing optional files are
# skipped). The generated template and notebook are added fresh. Never listed: experiment6.py (the
# reference solution), handout/report_answer_key.md (the instructor's answers), tests/, this script.
BUNDLE_FILES = ["handout/handout.zh.md", "handout/handout.en.md", "handout/figures/*.png",
                "handout/report_template.md", "handout/warmup_gan.py",
                "data/__init__.py", "data/phantoms.py", "data/prepare_ixi.py", "data/README_IXI.md",
                "grader/**/*",  # the whole package for self-checks, less its Gradescope set-up
                "requirements.txt", "requirements-notebook.txt", "requirements-data.txt", "LICENSE"]
# challenge_unet.py imports the reference solution (and draws figures the way visualize does): the
# instructor hands it out after the deadline, with experiment6.py.
NEVER_BUNDLED = ["experiment6.py", "report_answer_key.md", "make_student.py", "challenge_unet.py",
                 "INSTRUCTOR.md", "make_figures.py"]  # file names, anywhere: the solution and instructor-only files

STUDENT_README = """\
# 实验六 · 学生包 / Experiment 6 · student bundle

基于条件 GAN（pix2pix 思路）把 T1 加权 MRI 切片转换为 T2 加权切片。
A conditional GAN (the pix2pix idea) that turns a T1-weighted MRI slice into a T2-weighted one.

## 开始 / Getting started

1. 在本文件夹中创建虚拟环境并安装依赖 / create a virtual environment here and install:

   ```bash
   python -m venv .venv
   # Windows: .venv\\Scripts\\activate      macOS / Linux: source .venv/bin/activate
   pip install -r requirements.txt
   pip install -r requirements-notebook.txt   # 只在用 notebook 时需要 / only for the notebook route
   ```

   没有 NVIDIA GPU 的 Linux 电脑先装 CPU 版 PyTorch（小得多），网络慢时可用镜像：见讲义第 2 节。
   Linux without an NVIDIA GPU: install PyTorch's CPU build first (much smaller); slow network: use a
   mirror. See section 2 of the handout:

   ```bash
   pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu
   ```

2. 阅读讲义 `handout/handout.zh.md`（English: `handout/handout.en.md`）。
   Read the handout `handout/handout.zh.md` (English: `handout/handout.en.md`).
3. 在 `student_template.py`（或 `handout/experiment6_student.ipynb`）中补全第 1–5 步。
   Fill in Steps 1–5 in `student_template.py` (or `handout/experiment6_student.ipynb`).
4. 自查 / self-check: `python -m grader student_template.py`
   （notebook：`python -m grader handout/experiment6_student.ipynb`）
5. 训练 / train: `python student_template.py --epochs 1`，跑通后按讲义第 8 节的时间表选择轮数
   （then choose the epochs from the time table in section 8 of the handout）。
6. 实验报告与提交：见讲义第 11 节，报告模板 `handout/report_template.md`。
   Report and submission: section 11 of the handout, template `handout/report_template.md`.

## 内容 / Contents

| 文件 / file | 用途 / what for |
|---|---|
| `student_template.py` | 要补全的代码 / the code you complete |
| `handout/experiment6_student.ipynb` | 同样的代码，notebook 形式 / the same code as a notebook |
| `handout/handout.zh.md`, `handout/handout.en.md`, `handout/figures/` | 讲义 / the handout |
| `handout/report_template.md` | 实验报告模板 / lab report template |
| `handout/warmup_gan.py` | 可选热身：无条件 GAN / optional warm-up: an unconditional GAN |
| `data/phantoms.py` | 内置合成数据（没有真实数据时自动使用）/ built-in synthetic data, used when there is no real data |
| `grader/` | 自动评分器，用于自查（与助教使用的相同）/ the autograder for self-checks (the one the TAs use) |
| `requirements*.txt` | 依赖 / dependencies |

没有 `dataset/ixi2000/` 时，程序自动使用内置合成数据；教师发放真实数据后，把 `dataset/ixi2000/` 放在本文件夹中即可。
Without `dataset/ixi2000/` the built-in synthetic data is used; put the real data the instructor hands out
in this folder as `dataset/ixi2000/`.
"""


def _normalise(line):
    """A code line without its trailing comment and surrounding blanks, for matching lines across files."""
    return re.sub(r"\s+#.*$", "", line).strip()


def solution_lines(source_text, owner="visualize"):
    """The code lines of `owner`'s solution region(s) that occur nowhere else in the reference: what a
    bundle must not contain. Generic lines the given code also has (`G.train()`, `return path`) are
    not revealing and are left out, as are short generic lines (`rows = []`, `plt.close(fig)`: under 16
    characters) that any plotting code has."""
    lines = source_text.splitlines()
    regions = [r for r in find_regions(lines, ast.parse(source_text)) if r["owner"] == owner]
    inside = {i for r in regions for i in range(r["begin"] + 1, r["end"])}
    outside = {_normalise(line) for i, line in enumerate(lines) if i not in inside}
    found = {_normalise(lines[i]) for i in inside}
    return {line for line in found - outside if len(line) >= 16 and not line.startswith("#")}


def file_lines(name, data):
    """The text lines of a bundled file (a notebook's cell sources, not its JSON); [] for binaries."""
    if name.endswith(".png"):
        return []
    text = data.decode("utf-8", errors="replace")
    if name.endswith(".ipynb"):
        text = "\n".join("".join(c.get("source", "")) for c in json.loads(text).get("cells", []))
    return text.splitlines()


def find_leaks(files, forbidden_lines):
    """[(file, why)] for every bundled file that is the solution or holds a line of it."""
    leaks = []
    for name, data in files.items():
        if Path(name).name in NEVER_BUNDLED:
            leaks.append((name, "must never be handed out"))
            continue
        for line in file_lines(name, data):
            if _normalise(line) in forbidden_lines:
                leaks.append((name, f"Step 5 solution line: {line.strip()}"))
    return leaks


def bundle_files(source_text, root=ROOT):
    """{relative path: bytes} of the student bundle. Raises ValueError if anything of the solution leaks."""
    files = {}
    for pattern in BUNDLE_FILES:
        for path in sorted(root.glob(pattern)):
            if path.is_file() and not {"__pycache__", "gradescope"} & set(path.parts) and path.suffix != ".pyc":
                files[path.relative_to(root).as_posix()] = path.read_bytes()
    for path, text in generate(source_text).items():
        files[path.relative_to(ROOT).as_posix()] = text.encode("utf-8")
    files["README.md"] = STUDENT_README.encode("utf-8")
    if not any(fnmatch.fnmatch(n, "grader/*.py") for n in files):
        raise ValueError("the grader is missing from the bundle")
    leaks = find_leaks(files, solution_lines(source_text))
    if leaks:
        raise ValueError("the bundle would hand out the solution: "
                         + "; ".join(f"{name}: {why}" for name, why in leaks[:5]))
    return dict(sorted(files.items()))


def write_bundle(files, out):
    """OUT.zip (everything inside one top folder, fixed timestamps: the same zip every time) or a folder."""
    out = Path(out)
    if out.suffix.lower() == ".zip":
        out.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
            for name, data in files.items():
                info = zipfile.ZipInfo(f"{BUNDLE_TOP}/{name}", date_time=(2024, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                z.writestr(info, data)
        return out
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not empty: give a new folder or a .zip name")
    for name, data in files.items():
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return out


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------

def manifest_text(generated, root=ROOT):
    """grader/shipped.json: the fingerprint of every kit file a student may hand in untouched (the freshly
    generated template and notebook, and SHIPPED_FILES as they are on disk), for the grader's hand-in check."""
    texts = {path.relative_to(ROOT).as_posix(): text for path, text in generated.items()}
    for pattern in SHIPPED_FILES:
        for path in sorted(root.glob(pattern)):
            if path.is_file() and path.name != "__init__.py":
                texts[path.relative_to(root).as_posix()] = path.read_bytes().decode("utf-8")
    files = {name: fingerprint(text, Path(name).suffix)[1] for name, text in sorted(texts.items())}
    about = ("Fingerprints of the kit files a student may hand in untouched; the grader never grades them "
             "(grader/sources.py). Written by handout/make_student.py: do not edit.")
    return json.dumps({"about": about, "files": files}, indent=1) + "\n"


def generate(source_text):
    """{path: text} of every generated file."""
    out = {TEMPLATE: build_template(source_text), NOTEBOOK: notebook_text(build_notebook(source_text))}
    out[MANIFEST] = manifest_text(out)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description="Write student_template.py, the student notebook and grader/shipped.json "
                                            "(their fingerprints) from experiment6.py.")
    p.add_argument("--check", action="store_true", help="only compare the committed files with a fresh generation")
    p.add_argument("--bundle", metavar="OUT", help="write the student bundle to OUT.zip (or to the folder OUT)")
    args = p.parse_args(argv)
    try:
        source = REFERENCE.read_text(encoding="utf-8")
        files = generate(source)
        if args.bundle:
            out = write_bundle(bundle_files(source), args.bundle)
            print(f"wrote {out} (student bundle: no {REFERENCE.name}, no answer key)")
            return 0
    except ValueError as e:
        print(f"make_student: cannot generate from {REFERENCE.name}: {e}", file=sys.stderr)
        return 1
    stale = []
    for path, text in files.items():
        data = text.encode("utf-8")  # LF only: byte-identical on every OS
        name = path.relative_to(ROOT).as_posix()
        if args.check:
            if not path.is_file() or path.read_bytes() != data:
                stale.append(name)
        else:
            path.write_bytes(data)
            print(f"wrote {name}")
    if stale:
        print(f"make_student: out of date: {', '.join(stale)}\n"
              f"  run `python handout/make_student.py` and commit the result.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
