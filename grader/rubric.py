"""The rubric: every check, its step and its points (the single source; totals are asserted below).

Titles are shown to students: Chinese first, English alongside. Check ids are "step.n".
"""

STEP_POINTS = {1: 15, 2: 20, 3: 10, 4: 35, 5: 20}

STEP_TITLES = {
    1: "构建配对数据集 / Paired dataset",
    2: "生成器与判别器 / Generator and discriminator",
    3: "损失函数与优化器 / Losses and optimizers",
    4: "训练步骤 / Training step",
    5: "推理与可视化 / Inference and visualisation",
}

# id: (points, title)
CHECKS = {
    "1.1": (1, "数据集长度为两个文件夹 PNG 数的较小者 / dataset length is the smaller of the two folders' PNG counts"),
    "1.2": (3, "每个样本是显示文件图像的一对 (1,256,256) float32 数组 / items are pairs of (1,256,256) float32 arrays showing the files"),
    "1.3": (3, "像素缩放到 [-1,1]（黑=-1，白=1）/ pixels scaled to [-1,1] (black=-1, white=1)"),
    "1.4": (2, "RGB 图像转为单通道灰度 / an RGB PNG becomes one grayscale channel"),
    "1.5": (2, "非 256x256 的图像被缩放到 256x256 / non-256x256 images are resized to 256x256"),
    "1.6": (3, "dataset[i] 是排序后第 i 个文件名的 (T1, T2)，且两张图对齐 / dataset[i] is (T1, T2) of the i-th sorted name, aligned"),
    "1.7": (1, "只读取 PNG 文件，忽略其他文件 / only PNG files are read, other files are ignored"),
    "2.1": (4, "生成器输出形状 (N,1,256,256) / generator output shape (N,1,256,256)"),
    "2.2": (3, "生成器输出在 [-1,1]（Tanh）/ generator output in [-1,1] (Tanh)"),
    "2.3": (4, "判别器输出形状 (N,1,63,63) / discriminator output shape (N,1,63,63)"),
    "2.4": (3, "判别器输出在 (0,1)（Sigmoid）/ discriminator output in (0,1) (Sigmoid)"),
    "2.5": (3, "判别器同时依赖 T1 与 T2 输入 / discriminator depends on both inputs"),
    "2.6": (3, "梯度能到达每个参数 / gradients reach every parameter"),
    "3.1": (3, "criterion_GAN 的行为与 BCELoss 一致 / criterion_GAN behaves like BCELoss"),
    "3.2": (2, "criterion_L1 的行为与 L1Loss 一致 / criterion_L1 behaves like L1Loss"),
    "3.3": (3, "优化器是 Adam(lr=2e-4, betas=(0.5,0.999)) / optimizers are Adam(lr=2e-4, betas=(0.5,0.999))"),
    "3.4": (1, "build_optimizers 使用传入的 lr / build_optimizers honours its lr argument"),
    "3.5": (1, "每个优化器只管理自己网络的全部参数（由重算的更新核实）/ each optimizer covers exactly its own network "
               "(confirmed by recomputing its steps)"),
    "4.1": (3, "train_step 更新两个网络并返回两个有限的损失值（与重算的一步相符）/ train_step updates both "
               "networks and returns two finite loss values (next to a recomputed first step)"),
    "4.2": (6, "loss_G 的值正确，并随 lambda_l1 变化 / loss_G value is correct and follows lambda_l1"),
    "4.3": (5, "loss_D 的值正确（0.5、真/假目标）/ loss_D value is correct (0.5, real/fake targets)"),
    "4.4": (6, "生成器的一步更新正确（其对抗项不 detach）/ the generator's one-step update is correct (no detach in "
               "its adversarial term)"),
    "4.5": (5, "判别器的一步更新正确 / the discriminator's one-step update is correct"),
    "4.6": (4, "第二次调用不累加上一次的梯度（zero_grad）/ a second call adds no gradient left by the first (zero_grad)"),
    "4.7": (2, "留在生成器上的梯度只来自 loss_G 或已清零（detach）/ gradients left on the generator come from loss_G "
               "only, or are cleared (detach)"),
    "4.8": (4, "10 步真实训练使未见切片上的 L1 下降 / 10 real training steps lower L1 on unseen slices"),
    "5.1": (4, "visualize 在给定路径写出显示 G 输出的 PNG / visualize writes a PNG showing G's output at the given path"),
    "5.2": (2, "图像不是空白，且完整显示 [-1,1]（暗部未截断）/ the figure is not blank and shows all of [-1,1] (dark "
               "half not clipped)"),
    "5.3": (5, "图中有三个面板（T1 | 生成 T2 | 真实 T2）/ the figure shows three panels"),
    "5.4": (6, "图中间面板是 G 在 eval 模式下的输出（G.eval()）/ the middle panel is G's eval-mode output (G.eval())"),
    # No 5.5: it scored "no autograd graph in visualize's calls of G", which only the student's process can
    # tell (a reported fact, grader/protocol.py); it is a hint now and its points went to 5.4. Ids stay
    # stable so that grades.csv columns mean the same check from one term to the next.
    "5.6": (3, "导入文件没有副作用（不训练、不写文件），且 visualize 的图显示 G 的输出 / importing the file has no side "
               "effects (no training, no files) and visualize's figure shows G's output"),
}


def step_of(check_id):
    return int(check_id.split(".")[0])


for _s, _total in STEP_POINTS.items():
    assert sum(p for c, (p, _) in CHECKS.items() if step_of(c) == _s) == _total, _s
assert sum(STEP_POINTS.values()) == 100


def rubric_text():
    lines = []
    for s, total in STEP_POINTS.items():
        lines.append(f"Step {s} · {STEP_TITLES[s]}  ({total})")
        for c, (p, title) in CHECKS.items():
            if step_of(c) == s:
                lines.append(f"  {c:<4} {p:>2}  {title}")
    lines.append(f"合计 / Total: {sum(STEP_POINTS.values())}")
    return "\n".join(lines)
